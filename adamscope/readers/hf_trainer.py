"""Reader for Hugging Face Trainer `checkpoint-N/` folders: optimizer.pt, named via config.json.

The Trainer builds AdamW from two groups: group 0 holds the parameters that get weight decay,
group 1 the rest (biases and norm weights), each in `model.named_parameters()` order of the
parameters that require grad. optimizer.pt stores positions only, so names are recovered in one of
two ways:

(a) transformers importable (the reliable way): build the model from config.json on the meta device
    (no memory, no weights, no remote code), split its parameters with transformers' own
    `Trainer.get_decay_parameter_names`, and check every shape against the stored exp_avg; any
    disagreement raises NamingError rather than naming tensors wrongly.
(b) otherwise, or when the model cannot be built: names and shapes from model.safetensors (or its
    index). safetensors stores keys alphabetically, so the order is reconstructed: a parameter
    goes to group 1 when its name looks like a bias or norm (the Trainer's patterns) or it has
    fewer than two dimensions, else to group 0; within a group it is placed by shape. Names that
    share a shape within a group are ordered only by what the module tree guarantees (a module's
    own parameters before its sub-modules', list children in index order). Where that leaves
    several candidates for a position, the name says so instead of guessing:
    `model.layers.0.self_attn.{o_proj|q_proj}.weight#1` (braces: the candidates; `#k`: the k-th
    position with that same marker, added only to keep names unique; more than four candidates
    are written `{any of N}`); the TensorState carries a note with the full list and a warning is
    logged. Tied weights (lm_head = embedding) are stored and stepped once.

Under FSDP or DeepSpeed the Trainer writes other layouts (optimizer.bin, optimizer_0/,
global_stepN/); they raise UnsupportedFormatError for now.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adamscope.config import ReaderOptions
from adamscope.errors import CorruptCheckpointError, NamingError, UnsupportedFormatError
from adamscope.vocab import CheckpointInfo, TensorState

log = logging.getLogger(__name__)

OPTIMIZER = "optimizer.pt"
# The Trainer's no-decay name patterns (transformers 5.x), applied to the lower-cased name.
_NO_DECAY = [
    re.compile(p)
    for p in (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
]
_MAX_LISTED = 4  # ambiguity markers list at most this many candidates
_MAX_PERMUTED = 6  # unordered siblings beyond this are not enumerated: every position gets them all


class HFTrainerReader:
    """A `checkpoint-N/` folder written by `transformers.Trainer` (single process or DDP)."""

    name = "hf-trainer"

    @classmethod
    def probe(cls, path: Path) -> bool:
        folder = _folder(path)
        if folder is None:
            return False
        return (folder / "trainer_state.json").is_file() or (
            (folder / OPTIMIZER).is_file() and (folder / "config.json").is_file()
        )

    def __init__(self, path: Path, *, options: ReaderOptions) -> None:
        folder = _folder(path)
        if folder is None:
            raise UnsupportedFormatError(f"{path}: not a Hugging Face Trainer checkpoint folder")
        _check_layout(folder)
        self.path = folder
        self.options = options
        self._sd: Any = None
        self._names: list[str] | None = None
        self._ambiguous: dict[int, list[str]] = {}
        self._method = ""

    # -- the reader surface -------------------------------------------------------------------
    def describe(self) -> CheckpointInfo:
        sd = self._state_dict()
        names = self._param_names()
        shapes = [_shape(s["exp_avg"]) for s in sd["state"].values() if "exp_avg" in s]
        notes = [f"names: {self._method}"]
        if self._ambiguous:
            notes.append(f"{len(self._ambiguous)} of {len(names)} names ambiguous (marked {{a|b}})")
        return CheckpointInfo(
            path=self.path,
            format=self.name,
            step=self._global_step(),
            n_tensors=len(shapes),
            n_params=sum(_numel(s) for s in shapes),
            bytes_on_disk=(self.path / OPTIMIZER).stat().st_size,
            notes=tuple(notes),
        )

    def iter_tensors(self) -> Iterator[TensorState]:
        from adamscope.readers.torch_optim import check_adam, iter_adam_states

        source = str(self.path / OPTIMIZER)
        check_adam(self._state_dict(), source=source)  # SGD/Adafactor: say so before naming
        names = self._param_names()
        by_name = {names[i]: cands for i, cands in self._ambiguous.items()}
        for ts in iter_adam_states(self._state_dict(), names, source=source, options=self.options):
            cands = by_name.get(ts.name)
            if cands:
                ts.notes.append(
                    "name ambiguous (safetensors shapes only): one of " + ", ".join(cands)
                )
            yield ts

    # -- internals -----------------------------------------------------------------------------
    def _state_dict(self) -> Any:
        if self._sd is None:
            from adamscope.readers.torchzip import load_lazy

            f = self.path / OPTIMIZER
            sd = load_lazy(f, trust_pickle=self.options.trust_pickle)
            if not isinstance(sd, dict) or "state" not in sd or "param_groups" not in sd:
                raise UnsupportedFormatError(
                    f"{f}: not an optimizer state_dict (no state/param_groups)"
                )
            _check_ids(sd, source=str(f))
            self._sd = sd
        return self._sd

    def _global_step(self) -> int | None:
        try:
            step = json.loads((self.path / "trainer_state.json").read_text()).get("global_step")
            return int(step) if step is not None else None
        except (OSError, ValueError, TypeError):
            m = re.search(r"(\d+)$", self.path.name)
            return int(m.group(1)) if m else None

    def _param_names(self) -> list[str]:
        from adamscope.readers.torch_optim import param_names_from_groups

        if self._names is not None:
            return self._names
        sd = self._state_dict()
        groups = [list(g["params"]) for g in sd["param_groups"]]
        shapes = {int(i): _shape(s["exp_avg"]) for i, s in sd["state"].items() if "exp_avg" in s}
        stored = param_names_from_groups(sd)
        if stored is not None:
            self._names, self._method = stored, "param_names stored in optimizer.pt"
            return stored
        config_dir = Path(self.options.model) if self.options.model else self.path
        try:
            names = names_from_config(config_dir, groups, shapes, source=self.path / OPTIMIZER)
            self._method = f"model built on the meta device from {config_dir / 'config.json'}"
        except _CannotBuild as e:
            log.warning("%s: %s; matching names by shape from model.safetensors", self.path, e)
            names, self._ambiguous = names_from_safetensors(self.path, groups, shapes)
            self._method = "matched by shape from model.safetensors"
            if self._ambiguous:
                log.warning(
                    "%s: %d of %d parameter names are ambiguous by shape and marked {a|b}; install "
                    "transformers (pip install 'adamscope[hf]') to name them exactly",
                    self.path,
                    len(self._ambiguous),
                    len(names),
                )
        self._names = names
        return names


def _check_ids(sd: Any, *, source: str) -> None:
    """Param ids (in groups and state) must be integers and state entries dicts: the Trainer's
    optimizer.pt is a plain torch state_dict; anything else is a damaged file."""
    from adamscope.readers.torch_optim import group_ids, is_optim_state_dict

    if not is_optim_state_dict(sd):
        raise CorruptCheckpointError(f"{source}: state/param_groups have the wrong types")
    ids = [p for g in group_ids(sd, source=source) for p in g]
    if not all(isinstance(p, int) for p in [*ids, *sd["state"]]):
        raise CorruptCheckpointError(f"{source}: optimizer param ids are not all integers")
    if not all(isinstance(e, dict) for e in sd["state"].values()):
        raise CorruptCheckpointError(f"{source}: optimizer state entries are not all dicts")


def _folder(path: Path) -> Path | None:
    path = Path(path)
    if path.is_file() and path.name == OPTIMIZER:
        path = path.parent
    return path if path.is_dir() else None


def _check_layout(folder: Path) -> None:
    if (folder / OPTIMIZER).is_file():
        return
    ds = sorted(p.name for p in folder.glob("global_step*") if p.is_dir())
    if ds or (folder / "latest").is_file():
        where = f" ({ds[-1]}/)" if ds else ""
        raise UnsupportedFormatError(
            f"{folder}: holds a DeepSpeed checkpoint{where}, not a plain optimizer.pt; the "
            "hf-trainer reader does not read it — pass the DeepSpeed folder itself"
        )
    if (folder / "optimizer.bin").is_file() or any(folder.glob("optimizer_*")):
        raise UnsupportedFormatError(
            f"{folder}: holds an FSDP optimizer state (optimizer.bin or optimizer_0/), which the "
            "hf-trainer reader does not support yet"
        )
    raise UnsupportedFormatError(
        f"{folder}: no {OPTIMIZER} (saved with save_only_model=True?): no Adam state to read"
    )


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# -- (a) names from the model built on the meta device ----------------------------------------
class _CannotBuild(Exception):
    """transformers is missing or cannot build this config: fall back to safetensors shapes."""


def names_from_config(
    config_dir: Path, groups: list[list[int]], shapes: dict[int, tuple[int, ...]], *, source: Path
) -> list[str]:
    """Names in optimizer id order, from the model of `config_dir/config.json` on the meta device.

    Raises:
        _CannotBuild: transformers is not importable or the model cannot be built.
        NamingError: the model's parameters disagree with the optimizer's groups or shapes.
    """
    try:
        import torch
        import transformers
    except ImportError as e:
        raise _CannotBuild(f"transformers is not importable ({e})") from None
    if not (config_dir / "config.json").is_file():
        raise _CannotBuild(f"no config.json in {config_dir}")
    try:
        config = transformers.AutoConfig.from_pretrained(str(config_dir), local_files_only=True)
        arch = next(iter(getattr(config, "architectures", None) or []), None)
        cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
        with torch.device("meta"):
            # Only transformers' own model classes: a name from a file must never pick any callable.
            if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
                model = cls(config)
            else:
                model = transformers.AutoModelForCausalLM.from_config(config)
    except Exception as e:  # noqa: BLE001 - any failure to build means "use the fallback", logged
        raise _CannotBuild(
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
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise NamingError(
            f"{folder}: cannot name parameters: transformers is not usable and there is no "
            "model.safetensors(.index.json); install transformers or pass --model <model folder>"
        )
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(folder / f), framework="pt") as st:
            for k in st.keys():
                shapes[k] = tuple(st.get_slice(k).get_shape())
    return shapes


def names_from_safetensors(
    folder: Path, groups: list[list[int]], shapes: dict[int, tuple[int, ...]]
) -> tuple[list[str], dict[int, list[str]]]:
    """Names in optimizer id order matched by shape, and {position: candidates} where ambiguous.

    Raises:
        NamingError: groups or shapes cannot be matched to the stored tensors at all.
    """
    stored = _safetensors_shapes(folder)
    source = folder / OPTIMIZER
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


__all__ = ["HFTrainerReader", "ambiguity_marker", "names_from_config", "names_from_safetensors"]
