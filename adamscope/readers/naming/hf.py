"""Parameter names of a Hugging Face Trainer's optimizer.pt (see readers/hf_trainer.py for the
two ways): (a) the model built from config.json on the meta device, split with transformers' own
decay rule; (b) without transformers, names and shapes from model.safetensors, with the positions
that shapes cannot tell apart marked `{a|b}` instead of guessed.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adamscope.errors import NamingError

log = logging.getLogger(__name__)

# The Trainer's no-decay name patterns (transformers 5.x), applied to the lower-cased name.
_NO_DECAY = [
    re.compile(p)
    for p in (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
]
_MAX_LISTED = 4  # ambiguity markers list at most this many candidates
_MAX_PERMUTED = 6  # unordered siblings beyond this are not enumerated: every position gets them all


# -- (a) names from the model built on the meta device ----------------------------------------
class CannotBuild(Exception):
    """transformers is missing or cannot build this config: fall back to safetensors shapes."""


def names_from_config(
    config_dir: Path, groups: list[list[int]], shapes: dict[int, tuple[int, ...]], *, source: Path
) -> list[str]:
    """Names in optimizer id order, from the model of `config_dir/config.json` on the meta device.

    Raises:
        CannotBuild: transformers is not importable or the model cannot be built.
        NamingError: the model's parameters disagree with the optimizer's groups or shapes.
    """
    try:
        import torch
        import transformers
    except ImportError as e:
        raise CannotBuild(f"transformers is not importable ({e})") from None
    if not (config_dir / "config.json").is_file():
        raise CannotBuild(f"no config.json in {config_dir}")
    try:
        config = transformers.AutoConfig.from_pretrained(
            str(config_dir), local_files_only=True, trust_remote_code=False
        )
        arch = next(iter(getattr(config, "architectures", None) or []), None)
        cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
        with torch.device("meta"):
            # Only transformers' own model classes: a name from a file must never pick any callable.
            if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
                model = cls(config)
            else:
                model = transformers.AutoModelForCausalLM.from_config(
                    config, trust_remote_code=False
                )
    except Exception as e:  # noqa: BLE001 - any failure to build means "use the fallback", logged
        raise CannotBuild(
            f"cannot build the model from config.json ({type(e).__name__}: {e})"
        ) from None
    decay = _decay_names(model)
    params = [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]
    split = [[x for x in params if x[0] in decay], [x for x in params if x[0] not in decay]]
    written = getattr(config, "transformers_version", "?")
    hint = (
        f"(checkpoint written by transformers {written}, regrouped with {transformers.__version__})"
    )
    if [len(g) for g in groups] != [len(g) for g in split]:
        raise NamingError(
            f"{source}: optimizer groups hold {[len(g) for g in groups]} parameters but the model "
            f"from config.json gives {[len(g) for g in split]} (decay, no-decay) {hint}; frozen or "
            "added parameters (PEFT?) or a custom optimizer cannot be named"
        )
    names: list[str] = []
    for ids, named in zip(groups, split, strict=True):
        for pid, (name, shape) in zip(ids, named, strict=True):
            stored = shapes.get(int(pid))
            if stored is not None and stored != shape:
                raise NamingError(
                    f"{source}: param id {pid} has exp_avg shape {list(stored)} but the model from "
                    f"config.json puts {name} {list(shape)} there {hint}"
                )
            names.append(name)
    return names


def _decay_names(model: Any) -> set[str]:
    try:
        from transformers import Trainer

        # The method does not use `self` (5.x); calling it keeps us on the installed rule.
        return set(Trainer.get_decay_parameter_names(None, model))
    except Exception as e:  # noqa: BLE001 - fall back to the same rule, written out
        log.debug("Trainer.get_decay_parameter_names unusable (%s); applying its rule directly", e)
    import torch

    out: set[str] = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, torch.nn.LayerNorm):
            continue
        for p_name, _ in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if not any(p.search(full.lower()) for p in _NO_DECAY):
                out.add(full)
    return out


# -- (b) names matched by shape from model.safetensors ----------------------------------------
def _safetensors_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    from adamscope.readers import safetensors_io

    files = safetensors_io.model_files(folder)
    if not files:
        raise NamingError(
            f"{folder}: cannot name parameters: transformers is not usable and there is no "
            "model.safetensors(.index.json); install transformers or pass --model <model folder>"
        )
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        shapes.update(safetensors_io.shapes(f))
    return shapes


def names_from_safetensors(
    folder: Path, groups: list[list[int]], shapes: dict[int, tuple[int, ...]]
) -> tuple[list[str], dict[int, list[str]]]:
    """Names in optimizer id order matched by shape, and {position: candidates} where ambiguous.

    Raises:
        NamingError: groups or shapes cannot be matched to the stored tensors at all.
    """
    stored = _safetensors_shapes(folder)
    source = folder / "optimizer.pt"
    if len(groups) != 2:
        raise NamingError(
            f"{source}: {len(groups)} param groups, not the Trainer's two (decay, no-decay); "
            "install transformers to name them"
        )
    missing = [pid for g in groups for pid in g if int(pid) not in shapes]
    if missing:
        raise NamingError(
            f"{source}: param ids {missing[:5]} have no state, so their shapes are unknown; "
            "install transformers to name them"
        )
    if len(stored) == sum(len(g) for g in groups) + 1 and "lm_head.weight" in stored:
        del stored["lm_head.weight"]  # a tied head saved twice: the optimizer steps it once
    split: list[list[str]] = [[], []]
    for name, shape in stored.items():
        no_decay = len(shape) < 2 or any(p.search(name.lower()) for p in _NO_DECAY)
        split[int(no_decay)].append(name)
    names: dict[int, str] = {}
    ambiguous: dict[int, list[str]] = {}
    for g, (ids, cands) in enumerate(zip(groups, split, strict=True)):
        want = sorted(shapes[int(p)] for p in ids)
        have = sorted(stored[n] for n in cands)
        if want != have:
            raise NamingError(
                f"{source}: group {g} holds {len(ids)} tensors whose shapes do not match the "
                f"{len(cands)} {'no-' if g else ''}decay tensors of model.safetensors; install "
                "transformers or pass --model <model folder with config.json>"
            )
        for shape in sorted(set(want)):
            positions = [int(p) for p in ids if shapes[int(p)] == shape]
            same = [n for n in cands if stored[n] == shape]
            for pid, options in zip(positions, _position_candidates(same), strict=True):
                if len(options) == 1:
                    names[pid] = next(iter(options))
                else:
                    ambiguous[pid] = sorted(options)
    order = [int(p) for g in groups for p in g]
    _mark(names, ambiguous, order)
    return [names[p] for p in order], {
        i: ambiguous[p] for i, p in enumerate(order) if p in ambiguous
    }


def _mark(names: dict[int, str], ambiguous: dict[int, list[str]], order: list[int]) -> None:
    """Write `prefix.{a|b}.suffix` markers at the ambiguous positions, `#k` added where repeated."""
    markers = {pid: ambiguity_marker(ambiguous[pid]) for pid in order if pid in ambiguous}
    total = Counter(markers.values())
    seen: Counter[str] = Counter()
    for pid, marker in markers.items():
        seen[marker] += 1
        names[pid] = f"{marker}#{seen[marker]}" if total[marker] > 1 else marker


def ambiguity_marker(candidates: list[str]) -> str:
    """`a.b.{x|y}.c` for candidates sharing the dotted prefix `a.b` and suffix `c`."""
    parts = [c.split(".") for c in sorted(candidates)]
    pre = 0
    while all(len(p) > pre + 1 for p in parts) and len({p[pre] for p in parts}) == 1:
        pre += 1
    suf = 0
    while all(len(p) > pre + suf + 1 for p in parts) and len({p[-1 - suf] for p in parts}) == 1:
        suf += 1
    mids = sorted({".".join(p[pre : len(p) - suf]) for p in parts})
    mid = "|".join(mids) if len(mids) <= _MAX_LISTED else f"any of {len(mids)}"
    head = parts[0][:pre]
    tail = parts[0][len(parts[0]) - suf :] if suf else []
    return ".".join([*head, "{" + mid + "}", *tail])


@dataclass
class _Node:
    param: str | None = None  # the full name when this node is a parameter
    children: dict[str, _Node] = field(default_factory=dict)


def _position_candidates(names: list[str]) -> list[frozenset[str]]:
    """For same-shape names of one group, the names each position (in model order) may hold.

    `named_parameters()` walks modules depth-first: a module's own parameters first, then its
    sub-modules, list children ("0", "1", ...) in index order; the order among named siblings is the
    declaration order, which is not recorded anywhere we can read.
    """
    root = _Node()
    for name in names:
        node = root
        for part in name.split("."):
            node = node.children.setdefault(part, _Node())
        node.param = name
    return _candidates(root)


def _candidates(node: _Node) -> list[frozenset[str]]:
    if node.param is not None:
        return [frozenset([node.param])]
    own = [(k, c) for k, c in node.children.items() if c.param is not None]
    subs = [(k, c) for k, c in node.children.items() if c.param is None]
    return _arrange(own) + _arrange(subs)


def _arrange(items: list[tuple[str, _Node]]) -> list[frozenset[str]]:
    if items and all(k.isdigit() for k, _ in items):  # ModuleList / ParameterList: index order
        return [s for _, c in sorted(items, key=lambda kc: int(kc[0])) for s in _candidates(c)]
    blocks = [_candidates(c) for _, c in items]
    if len(blocks) <= 1:
        return blocks[0] if blocks else []
    size = sum(len(b) for b in blocks)
    if len(blocks) > _MAX_PERMUTED:
        everything = frozenset().union(*(s for b in blocks for s in b))
        return [everything] * size
    pos: list[set[str]] = [set() for _ in range(size)]
    for perm in itertools.permutations(blocks):
        for i, s in enumerate(s for b in perm for s in b):
            pos[i] |= s
    return [frozenset(p) for p in pos]
