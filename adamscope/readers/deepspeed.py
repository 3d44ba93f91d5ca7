"""DeepSpeed checkpoints: ZeRO stage 1/2/3 folders (any data-parallel world size, fp32 or bf16) and
universal checkpoints (`ds_to_universal`), streamed fragment by fragment from each rank's file.

Layouts (FORMATS.md, checked against DeepSpeed 0.19.8):
- `<dir>/latest` names a tag folder `global_stepN/` holding
  `[zero_pp_rank_0_]mp_rank_00_model_states.pt` (`param_shapes`: per group / sub-group, ordered
  name -> shape) and one
  `[bf16_]zero_pp_rank_D_mp_rank_00_optim_states.pt` per data-parallel rank D.
- Stage 1/2: each group's parameters are flattened in `param_shapes[g]` order (plus per-parameter
  `param_alignment_paddings`), zero-padded and split into equal partitions in rank order; the inner
  torch optimizer (`base_optimizer_state`) holds one flat exp_avg/exp_avg_sq per group and rank.
  `param_slice_mappings` (name -> start, numel in the rank's partition) says where each piece is.
- Stage 3: every parameter is padded to a multiple of the world size W; rank r holds elements
  [r*c, (r+1)*c) with c = ceil(numel / W), concatenated in `param_shapes[j]` order per sub-group j.
- Universal: `zero/<name>/{exp_avg,exp_avg_sq[,step]}.pt`, one parameter per file, plus
  `zero/optimizer_state.pt` with param_groups.
Pickles hold DeepSpeed objects: they are read with the restricted unpickler (stubs, nothing runs).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adamscope.config import ReaderOptions
from adamscope.errors import CorruptCheckpointError, UnsupportedFormatError
from adamscope.readers import guard
from adamscope.readers.base import child_path, inside
from adamscope.readers.naming import is_tensor_like, strip_compile_prefix
from adamscope.readers.optim_state import check_adam, check_dense, hyper_params
from adamscope.vocab import CheckpointInfo, TensorState

log = logging.getLogger(__name__)

_OPTIM_RE = re.compile(r"^(bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
_MODEL_FILES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")
_MAX_OPEN_FILES = 64  # rank files kept open at once while streaming (stage 3 touches every rank)


def resolve_tag_folder(path: Path) -> Path | None:
    """The `global_stepN` folder of a DeepSpeed checkpoint at `path` (itself or via latest*)."""
    if not path.is_dir():
        return None
    for pointer in ("latest", "latest_universal"):
        latest = path / pointer
        if os.path.lexists(latest):  # a FIFO or a sparse file of GBs: refused, not read
            raw = guard.bounded_read(latest, limit=guard.POINTER_BYTES, what="DeepSpeed tag file")
            tag = raw.decode("utf-8", errors="replace").strip()
            # a tag is one folder name: `latest` must not point adamscope outside the checkpoint
            if (
                tag
                and "/" not in tag
                and "\\" not in tag
                and tag not in (".", "..")
                and (path / tag).is_dir()
            ):
                # neither `latest` nor the tag folder may be a symlink that leads elsewhere
                inside(path, latest, source=latest)
                return inside(path, path / tag, source=latest)
    if any((path / m).is_file() for m in _MODEL_FILES):
        return path
    return None


def _model_states(folder: Path) -> Path:
    for name in _MODEL_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CorruptCheckpointError(f"{folder}: no mp_rank_00_model_states.pt (param_shapes) found")


def _load(path: Path, options: ReaderOptions) -> Any:
    from adamscope.readers.torchzip import load_lazy

    return load_lazy(path, trust_pickle=options.trust_pickle)


def _number(x: Any) -> float:
    return float(x.item()) if is_tensor_like(x) else float(x)


def _stub_int(x: Any) -> int | None:
    """ZeroStageEnum (a stub recording its constructor args) or a plain int."""
    if isinstance(x, int):
        return x
    args = getattr(x, "args", ())
    return int(args[0]) if args and isinstance(args[0], int) else None


def _fragment(x: Any) -> tuple[int, int]:
    """(start, numel) of a stubbed fragment_address (a dataclass, or a namedtuple before 0.19)."""
    attrs = x.attrs() if hasattr(x, "attrs") else {}
    if "start" in attrs and "numel" in attrs:
        return int(attrs["start"]), int(attrs["numel"])
    args = getattr(x, "args", None) or (tuple(x) if isinstance(x, tuple) else ())
    if len(args) == 2:
        return int(args[1]), int(args[0])  # namedtuple fragment_address(numel, start)
    raise CorruptCheckpointError(f"unrecognised fragment_address {guard.brief(x)}")


def _shapes(model_sd: Any, *, source: Path) -> list[OrderedDict[str, tuple[int, ...]]]:
    shapes = model_sd.get("param_shapes") if isinstance(model_sd, dict) else None
    if isinstance(shapes, dict):  # very old DeepSpeed: one dict for all parameters
        shapes = [shapes]
    if not isinstance(shapes, list) or not all(isinstance(s, dict) for s in shapes):
        raise CorruptCheckpointError(f"{source}: no 'param_shapes' list")
    out = []
    for s in shapes:
        group: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        for k, v in s.items():
            if not isinstance(k, str) or not isinstance(v, tuple | list):
                raise CorruptCheckpointError(
                    f"{source}: param_shapes holds a {type(k).__name__} -> {type(v).__name__} "
                    "entry, not name -> shape"
                )
            what = f"a dimension of param_shapes[{k[:80]!r}]"
            group[k] = tuple(guard.finite_int(d, source=source, what=what) for d in v)
        out.append(group)
    return out


def _dict(x: Any) -> dict:
    """`x` when it is a dict, else {} (a ds_config section that is a list, a string, None)."""
    return x if isinstance(x, dict) else {}


def _group_of(param_groups: list[dict], j: int) -> dict:
    """The param group that owns (sub-)group j (its `params` list holds j)."""
    for group in param_groups:
        if j in list(group.get("params", ())):
            return group
    if len(param_groups) == 1:
        return param_groups[0]
    return param_groups[min(j, len(param_groups) - 1)]


@dataclass(frozen=True)
class _Fragment:
    """Elements [start, start+count) of a rank's flat m/v are elements [offset, ...) of a tensor."""

    m: Any
    v: Any
    vmax: Any
    start: int
    count: int
    offset: int


# (name, shape, its fragments or a function making them)
_Layout = list[tuple[str, tuple[int, ...], Any]]


def _flat_tensors(state: dict, *, source: Path) -> tuple[Any, Any, Any]:
    """A rank's flat m, v (and max v or None), after checking that they are dense tensors."""
    tensors = {k: state.get(k) for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")}
    for what, t in tensors.items():
        if t is None and what == "max_exp_avg_sq":
            continue
        if not is_tensor_like(t):
            raise CorruptCheckpointError(f"{source}: {what} is not a tensor")
        check_dense(t, source=str(source), what=f"flat {what}")
    m, v, vmax = tensors.values()
    return m, v, vmax


def _checked_fragment(
    state: dict, start: int, count: int, offset: int, *, source: Path
) -> _Fragment:
    """A fragment of a rank's flat m/v (and max v), after checking that the tensors are dense and
    that [start, start+count) lies inside them."""
    return _bounded(_flat_tensors(state, source=source), start, count, offset, source=source)


def _bounded(
    flats: tuple[Any, Any, Any], start: int, count: int, offset: int, *, source: Path
) -> _Fragment:
    """A fragment of checked flat tensors, once [start, start+count) is inside each of them."""
    for what, t in zip(("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), flats, strict=True):
        if t is None:
            continue
        if start < 0 or count < 0 or start + count > t.numel:
            raise CorruptCheckpointError(
                f"{source}: fragment [{start}, {start + count}) lies outside the flat {what} of "
                f"{t.numel} elements"
            )
    m, v, vmax = flats
    return _Fragment(m, v, vmax, start, count, offset)


class _OpenFiles:
    """Closes the least recently used rank files so streaming never holds thousands of fds."""

    def __init__(self, limit: int = _MAX_OPEN_FILES) -> None:
        self.limit = limit
        self.open: OrderedDict[int, Any] = OrderedDict()

    def touch(self, tensor: Any) -> None:
        archive = getattr(tensor, "archive", None)
        if archive is None:
            return
        self.open[id(archive)] = archive
        self.open.move_to_end(id(archive))
        while len(self.open) > self.limit:
            _, oldest = self.open.popitem(last=False)
            oldest.close()


def stream_fragments(
    frags: list[_Fragment] | Callable[[], list[_Fragment]], n: int, files: _OpenFiles
) -> Iterator[tuple]:
    """Chunks (offset, m, v, vmax) of at most n elements over the fragments (one chunk spans
    several small fragments of consecutive ranks), read on `fanout`'s reader threads. `frags`
    may be a function making them: called here, for a tensor that is read."""
    from adamscope.readers import fanout

    if callable(frags):
        frags = frags()
    pieces = [
        fanout.Piece(f.offset, f.count, lambda f=f: (f.m, f.v, f.vmax), start=f.start)
        for f in frags
    ]

    def done(sources: fanout.Sources) -> None:
        for t in sources:
            files.touch(t)

    return fanout.stream(pieces, n, done=done)


class DeepSpeedReader:
    """A DeepSpeed ZeRO (stage 1, 2 or 3) checkpoint folder."""

    name = "deepspeed"

    @classmethod
    def probe(cls, path: Path) -> bool:
        folder = resolve_tag_folder(Path(path))
        return folder is not None and any(_OPTIM_RE.match(p.name) for p in folder.iterdir())

    def __init__(self, path: Path, *, options: ReaderOptions) -> None:
        self.path = Path(path)
        self.options = options
        folder = resolve_tag_folder(self.path)
        if folder is None:
            raise UnsupportedFormatError(f"{self.path}: not a DeepSpeed checkpoint folder")
        self.folder = folder
        self.model_file = _model_states(folder)
        self.model_sd = _load(self.model_file, options)
        self.param_shapes = _shapes(self.model_sd, source=self.model_file)
        self.optim_files = self._optim_files()
        self.world = len(self.optim_files)
        ds_config = _dict(self.model_sd.get("ds_config"))
        zero_cfg = _dict(ds_config.get("zero_optimization"))
        self.stage = guard.finite_int(
            zero_cfg.get("stage", 0) or 0, source=self.model_file, what="zero_optimization.stage"
        )
        self.bf16 = self.optim_files[0].name.startswith("bf16_") or bool(
            _dict(ds_config.get("bf16")).get("enabled", False)
        )

    def _optim_files(self) -> list[Path]:
        by_rank: dict[int, Path] = {}
        mp_ranks = set()
        for p in self.folder.iterdir():
            match = _OPTIM_RE.match(p.name)
            if match:
                by_rank[int(match.group(2))] = p
                mp_ranks.add(int(match.group(3)))
        if len(mp_ranks) > 1:
            raise UnsupportedFormatError(
                f"{self.folder}: tensor-parallel DeepSpeed checkpoint ({len(mp_ranks)} mp ranks); "
                "convert it with deepspeed.checkpoint.ds_to_universal and read that"
            )
        world = max(by_rank) + 1 if by_rank else 0
        if not by_rank or world != len(by_rank):
            # never range(world): a rank index of 10**12 in a file name must not build a list
            missing = [r for r in range(min(world, len(by_rank) + 5)) if r not in by_rank][:5]
            n = world - len(by_rank)
            more = f" and {n - len(missing)} more" if n > len(missing) else ""
            raise CorruptCheckpointError(
                f"{self.folder}: optimizer shards of ranks {missing}{more} are missing "
                f"({len(by_rank)} shard files, highest rank {world - 1})"
            )
        declared = self.model_sd.get("dp_world_size")
        if isinstance(declared, int) and declared != world:
            raise CorruptCheckpointError(
                f"{self.folder}: dp_world_size is {declared} but {world} optimizer shards exist"
            )
        return [by_rank[r] for r in range(world)]

    def describe(self) -> CheckpointInfo:
        names = [n for shapes in self.param_shapes for n in shapes]
        numel = sum(math.prod(s) for shapes in self.param_shapes for s in shapes.values())
        steps = self.model_sd.get("global_steps")
        notes = [f"ZeRO stage {self.stage}, data-parallel world size {self.world}"]
        if self.bf16:
            notes.append("bf16 run (fp32 master state)")
        return CheckpointInfo(
            path=self.path,
            format="deepspeed",
            step=int(steps) if isinstance(steps, int) else None,
            n_tensors=len(names),
            n_params=numel,
            bytes_on_disk=sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file()),
            notes=tuple(notes),
        )

    def _rank_states(self) -> tuple[list[dict], list[dict], int]:
        """Per rank the (lazy) outer optimizer dict and its inner torch state; the ZeRO stage."""
        outers = []
        for f in self.optim_files:
            tree = _load(f, self.options)
            outer = tree.get("optimizer_state_dict") if isinstance(tree, dict) else None
            if not isinstance(outer, dict):
                raise CorruptCheckpointError(f"{f}: no 'optimizer_state_dict'")
            outers.append(outer)
        stage = _stub_int(outers[0].get("zero_stage")) or self.stage
        key = "optimizer_state_dict" if stage == 3 else "base_optimizer_state"
        inners = [o.get(key) for o in outers]
        for f, inner in zip(self.optim_files, inners, strict=True):
            if not isinstance(inner, dict) or "state" not in inner or "param_groups" not in inner:
                raise CorruptCheckpointError(f"{f}: no inner optimizer state '{key}'")
        check_adam(inners[0], source=str(self.optim_files[0]))
        return outers, inners, stage

    def iter_tensors(self) -> Iterator[TensorState]:
        frozen = self.model_sd.get("frozen_param_shapes") or {}
        if frozen:
            log.info("%s: %d frozen parameters have no optimizer state", self.folder, len(frozen))
        outers, inners, stage = self._rank_states()
        psms = [o.get("param_slice_mappings") for o in outers]
        use_psm = stage != 3 and all(isinstance(m, list) for m in psms)
        pads = outers[0].get("param_alignment_paddings")
        files = _OpenFiles()
        param_groups = list(inners[0]["param_groups"])
        for j, shapes in enumerate(self.param_shapes):
            group = _group_of(param_groups, j)
            hp = hyper_params(group, source=str(self.optim_files[0]), options=self.options)
            step = self._step(inners[0], group, j)
            states = [inner["state"].get(j) for inner in inners]
            if any(s is None for s in states):
                log.warning(
                    "%s: group %d has no optimizer state on some rank; skipped", self.folder, j
                )
                continue
            if stage == 3:
                layouts: Iterator[_Layout] = self._stage3_fragments(shapes, states)
            elif use_psm:
                layouts = iter([self._mapped_fragments(shapes, states, [m[j] for m in psms])])
            else:
                group_pads = pads[j] if isinstance(pads, list) and j < len(pads) else None
                layouts = iter([self._flat_fragments(shapes, states, group_pads)])
            for name, shape, frags in (t for layout in layouts for t in layout):
                yield TensorState(
                    name=strip_compile_prefix(name),
                    shape=shape,
                    step=step,
                    hp=hp,
                    dtype=states[0]["exp_avg"].dtype_name,
                    chunks=lambda n, fr=frags: stream_fragments(fr, n, files),
                )

    def _step(self, inner0: dict, group: dict, j: int) -> float:
        entry = inner0["state"].get(j) or {}
        for source in (entry.get("step"), group.get("step")):  # FusedAdam keeps it in the group
            if source is not None:
                return _number(source)
        raise CorruptCheckpointError(f"{self.optim_files[0]}: no 'step' for group {j}")

    def _mapped_fragments(self, shapes: dict, states: list[dict], psm: list[dict]) -> _Layout:
        """Stage 1/2 with DeepSpeed's own map: name -> (start, numel) in each rank's partition."""
        out = []
        for name, shape in shapes.items():
            frags, offset = [], 0
            for rank, mapping in enumerate(psm):
                if not isinstance(mapping, dict):
                    raise CorruptCheckpointError(
                        f"{self.optim_files[rank]}: param_slice_mappings of a group is "
                        f"{type(mapping).__name__}, not a name -> fragment map"
                    )
                if name in mapping:
                    start, count = _fragment(mapping[name])
                    frags.append(self._frag(states[rank], start, count, offset))
                    offset += count
            self._check(name, shape, offset)
            out.append((name, shape, frags))
        return out

    def _flat_fragments(self, shapes: dict, states: list[dict], pads: Any) -> _Layout:
        """Stage 1/2 without a map (older DeepSpeed): a running offset over equal partitions."""
        size = states[0]["exp_avg"].numel
        if not (isinstance(pads, list) and len(pads) == len(shapes)):
            pads = [0] * len(shapes)
        out, offset = [], 0
        for (name, shape), pad in zip(shapes.items(), pads, strict=True):
            lo, hi = offset, offset + math.prod(shape)
            frags = []
            for rank in range(lo // size, min(-(-hi // size), self.world)):
                a, b = max(lo, rank * size), min(hi, (rank + 1) * size)
                if b > a:
                    frags.append(self._frag(states[rank], a - rank * size, b - a, a - lo))
            self._check(name, shape, sum(f.count for f in frags))
            out.append((name, shape, frags))
            offset = hi + int(pad)
        return out

    def _stage3_fragments(self, shapes: dict, states: list[dict]) -> Iterator[_Layout]:
        """Stage 3: each rank holds ceil(numel / W) elements of every parameter of the sub-group.
        Lazily, tensor by tensor: at 1,024 ranks a sub-group is millions of fragments; each rank's
        flat tensors are checked once, each fragment only against their bounds."""
        per_rank = [-(-math.prod(shape) // self.world) for shape in shapes.values()]
        size = states[0]["exp_avg"].numel
        if sum(per_rank) > size:
            raise CorruptCheckpointError(
                f"{self.optim_files[0]}: sub-group partition holds {size} elements, "
                f"param_shapes need {sum(per_rank)}"
            )
        flats = [_flat_tensors(st, source=self.folder) for st in states]
        within = 0
        for (name, shape), c in zip(shapes.items(), per_rank, strict=True):
            # a tensor's fragments are made when it is read: under torchrun a process reads
            # 1/world of the tensors and so lays out only those
            make = functools.partial(self._stage3_tensor, flats, within, c, math.prod(shape))
            yield [(name, shape, make)]
            within += c

    def _stage3_tensor(self, flats: list, within: int, c: int, numel: int) -> list[_Fragment]:
        """The fragments of one stage-3 tensor: c elements at `within` of each rank's flats."""
        frags = []
        for rank in range(self.world):
            count = max(0, min(c, numel - rank * c))
            if count:
                frags.append(_bounded(flats[rank], within, count, rank * c, source=self.folder))
        return frags

    def _frag(self, state: dict, start: int, count: int, offset: int) -> _Fragment:
        return _checked_fragment(state, start, count, offset, source=self.folder)

    def _check(self, name: str, shape: tuple[int, ...], found: int) -> None:
        if found != math.prod(shape):
            raise CorruptCheckpointError(
                f"{self.folder}: '{name}' has {found} elements across ranks, "
                f"param_shapes says {math.prod(shape)}"
            )


def _universal_folder(path: Path) -> Path | None:
    """The folder holding `zero/` of a universal checkpoint at `path` (itself or via latest*)."""
    for folder in (resolve_tag_folder(path), path):
        if folder is not None and (folder / "zero" / "optimizer_state.pt").is_file():
            return folder
    return None


def _param_tensor(tree: Any, *, source: Path) -> Any:
    """The tensor of a universal `<state>.pt` file: a bare tensor or {'param': tensor, ...}."""
    if isinstance(tree, dict):
        tree = tree.get("param")
    if not is_tensor_like(tree):
        raise CorruptCheckpointError(f"{source}: expected a tensor or a dict with 'param'")
    return tree


class DeepSpeedUniversalReader:
    """A DeepSpeed universal checkpoint (`ds_to_universal`): one folder per parameter."""

    name = "deepspeed-universal"

    @classmethod
    def probe(cls, path: Path) -> bool:
        return Path(path).is_dir() and _universal_folder(Path(path)) is not None

    def __init__(self, path: Path, *, options: ReaderOptions) -> None:
        self.path = Path(path)
        self.options = options
        folder = _universal_folder(self.path)
        if folder is None:
            raise UnsupportedFormatError(f"{self.path}: no zero/optimizer_state.pt (not universal)")
        self.folder = folder
        self.zero = folder / "zero"
        self.optim_sd = _load(self.zero / "optimizer_state.pt", options)
        self.model_sd: dict = {}
        if any((folder / m).is_file() for m in _MODEL_FILES):
            self.model_sd = _load(_model_states(folder), options)
        self.param_shapes = self._param_shapes()

    def _param_shapes(self) -> list[OrderedDict[str, tuple[int, ...] | None]]:
        if self.model_sd.get("param_shapes") is not None:
            return list(_shapes(self.model_sd, source=_model_states(self.folder)))
        names = sorted(p.name for p in self.zero.iterdir() if (p / "exp_avg.pt").is_file())
        log.warning(
            "%s: no model_states file with param_shapes; parameters listed alphabetically "
            "and shaped as stored",
            self.folder,
        )
        return [OrderedDict((n, None) for n in names)]

    def _param_groups(self) -> list[dict]:
        sd = self.optim_sd
        for holder in (sd, sd.get("optimizer_state_dict"), sd.get("base_optimizer_state")):
            if isinstance(holder, dict) and isinstance(holder.get("param_groups"), list):
                return list(holder["param_groups"])
        raise CorruptCheckpointError(f"{self.zero / 'optimizer_state.pt'}: no param_groups")

    def describe(self) -> CheckpointInfo:
        shapes = [s for group in self.param_shapes for s in group.values()]
        steps = self.model_sd.get("global_steps")
        n_params = sum(math.prod(s) for s in shapes if s is not None)
        return CheckpointInfo(
            path=self.path,
            format=self.name,
            step=int(steps) if isinstance(steps, int) else None,
            n_tensors=len(shapes),
            n_params=n_params,
            bytes_on_disk=sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file()),
            notes=(f"ZeRO stage {_stub_int(self.optim_sd.get('zero_stage'))} (universal)",),
        )

    def _step(self, name: str, j: int) -> float:
        step_file = self.zero / name / "step.pt"
        if step_file.is_file():
            return _number(_load(step_file, self.options))
        inner = self.optim_sd.get("optimizer_state_dict") or self.optim_sd.get(
            "base_optimizer_state"
        )
        entry = inner.get("state", {}).get(j) if isinstance(inner, dict) else None
        if isinstance(entry, dict) and entry.get("step") is not None:
            return _number(entry["step"])
        raise CorruptCheckpointError(
            f"{self.zero / name}: no step.pt and no step in optimizer_state"
        )

    def iter_tensors(self) -> Iterator[TensorState]:
        groups = self._param_groups()
        source = str(self.zero / "optimizer_state.pt")
        files = _OpenFiles()
        for j, shapes in enumerate(self.param_shapes):
            hp = hyper_params(_group_of(groups, j), source=source, options=self.options)
            for name, shape in shapes.items():
                folder = child_path(self.zero, str(name), source=Path(source))
                if (
                    not (folder / "exp_avg.pt").is_file()
                    or not (folder / "exp_avg_sq.pt").is_file()
                ):
                    raise CorruptCheckpointError(f"{folder}: exp_avg.pt / exp_avg_sq.pt missing")
                m = _param_tensor(_load(folder / "exp_avg.pt", self.options), source=folder)
                v = _param_tensor(_load(folder / "exp_avg_sq.pt", self.options), source=folder)
                shape = tuple(m.shape) if shape is None else shape
                if not (m.numel == v.numel == math.prod(shape)):
                    raise CorruptCheckpointError(
                        f"{folder}: exp_avg has {m.numel} elements, exp_avg_sq {v.numel}, "
                        f"param_shapes says {math.prod(shape)}"
                    )
                frags = [
                    _checked_fragment({"exp_avg": m, "exp_avg_sq": v}, 0, m.numel, 0, source=folder)
                ]
                yield TensorState(
                    name=strip_compile_prefix(name),
                    shape=shape,
                    step=self._step(name, j),
                    hp=hp,
                    dtype=m.dtype_name,
                    chunks=lambda n, fr=frags: stream_fragments(fr, n, files),
                )
