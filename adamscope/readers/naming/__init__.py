"""Parameter-name (fqn) helpers: torch.compile prefixes, tied weights, and aligning optimizer ids.

Optimizer state is keyed by integer ids; names come from a model state_dict. The helpers here never
guess silently: an alignment is accepted only when it is the *only* one consistent with the shapes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from adamscope.errors import NamingError

log = logging.getLogger(__name__)

COMPILE_PREFIX = "_orig_mod."
# torch's own BatchNorm buffers: state_dict entries that are never parameters.
KNOWN_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
_FLOAT_DTYPES = ("float", "bfloat16", "half", "complex")

Shape = tuple[int, ...]


def strip_compile_prefix(name: str) -> str:
    """Removes torch.compile's `_orig_mod.` from every level of a dotted name."""
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def is_tensor_like(x: Any) -> bool:
    """LazyTensor / InMemoryTensor duck type."""
    return hasattr(x, "read") and hasattr(x, "shape") and hasattr(x, "dtype_name")


def is_float(t: Any) -> bool:
    return any(t.dtype_name.startswith(p) for p in _FLOAT_DTYPES)


def storage_identity(t: Any) -> tuple[Any, ...]:
    """Two tensors with the same identity are the same (tied) tensor."""
    return (t.storage_key, t.storage_offset, tuple(t.shape), tuple(t.stride))


def model_entries(sd: Any, *, source: str) -> list[tuple[str, Any]]:
    """(name, tensor) pairs of a model state_dict in file order, `_orig_mod.` stripped.

    Accepts a bare state_dict or a dict holding one under 'model', 'state_dict',
    'model_state_dict' or 'module'.
    """
    if isinstance(sd, dict) and not any(is_tensor_like(v) for v in sd.values()):
        for key in ("model", "state_dict", "model_state_dict", "module"):
            if isinstance(sd.get(key), dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict):
        raise NamingError(f"{source}: expected a model state_dict (a dict of tensors)")
    entries = [(strip_compile_prefix(str(k)), v) for k, v in sd.items() if is_tensor_like(v)]
    if not entries:
        raise NamingError(f"{source}: holds no tensors to take parameter names from")
    return entries


def parameter_candidates(
    entries: Sequence[tuple[str, Any]], *, drop_known_buffers: bool = True
) -> tuple[list[tuple[str, Any]], list[str]]:
    """Entries that can be parameters, in order: tied duplicates, non-float tensors and torch's
    BatchNorm buffers removed (named_parameters() yields a tied parameter once, at its first name).

    Returns (candidates, notes).
    """
    seen: dict[tuple[Any, ...], str] = {}
    out: list[tuple[str, Any]] = []
    notes: list[str] = []
    for name, t in entries:
        ident = storage_identity(t)
        if ident in seen:
            notes.append(f"{name} is tied to {seen[ident]}")
            continue
        seen[ident] = name
        if not is_float(t):
            continue
        if drop_known_buffers and name.rsplit(".", 1)[-1] in KNOWN_BUFFER_SUFFIXES:
            continue
        out.append((name, t))
    return out, notes


def count_embeddings(pattern: Sequence[Shape | None], shapes: Sequence[Shape]) -> tuple[int, list]:
    """Ways to place `pattern` (None = any shape) as an ordered subsequence of `shapes`.

    Returns (count capped at 2, the leftmost embedding as indices into `shapes` or []).
    """
    import numpy as np

    n, m = len(pattern), len(shapes)
    if n > m:
        return 0, []
    ids: dict[Shape, int] = {}
    cand = np.array([ids.setdefault(tuple(s), len(ids)) for s in shapes], dtype=np.int64)
    match = np.empty((n, m), dtype=bool)
    for i, p in enumerate(pattern):
        match[i] = True if p is None else cand == ids.get(tuple(p), -1)
    # ways[i][j]: embeddings of pattern[i:] into shapes[j:], capped at 2
    ways = np.zeros((n + 1, m + 1), dtype=np.int64)
    ways[n, :] = 1
    for i in range(n - 1, -1, -1):
        contrib = np.where(match[i], ways[i + 1, 1:], 0)
        ways[i, :m] = np.minimum(np.cumsum(contrib[::-1])[::-1], 2)
    total = int(ways[0, 0])
    if total == 0:
        return 0, []
    chosen, j = [], 0
    for i in range(n):
        while not (match[i, j] and ways[i + 1, j + 1] > 0):
            j += 1
        chosen.append(j)
        j += 1
    return total, chosen


def align_names(
    pattern: Sequence[Shape | None],
    candidates: Sequence[tuple[str, Any]],
    *,
    source: str,
    what: str,
) -> list[str]:
    """Names for optimizer ids whose shapes are `pattern`, taken in order from `candidates`.

    Accepted only when exactly one ordered placement fits the shapes; otherwise NamingError.
    """
    shapes = [tuple(t.shape) for _, t in candidates]
    count, chosen = count_embeddings(pattern, shapes)
    if count == 0:
        raise NamingError(
            f"{source}: the {len(pattern)} optimizer parameters of {what} do not match the model's "
            f"{len(candidates)} candidate tensors in order and shape; cannot name them"
        )
    if count > 1:
        raise NamingError(
            f"{source}: naming the {len(pattern)} optimizer parameters of {what} from "
            f"{len(candidates)} model tensors is ambiguous (several placements fit the shapes); "
            "save the optimizer built from model.named_parameters() (torch >= 2.6 stores "
            "param_names) or pass --model with a state_dict of parameters only"
        )
    if len(chosen) != len(candidates):
        skipped = sorted(set(range(len(candidates))) - set(chosen))
        log.info(
            "%s: %s: %d model tensors are not optimizer parameters (buffers/frozen), e.g. %s",
            source,
            what,
            len(skipped),
            ", ".join(candidates[k][0] for k in skipped[:3]),
        )
    return [candidates[k][0] for k in chosen]
