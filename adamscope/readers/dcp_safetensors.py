"""DCP checkpoints serialized as safetensors, found by key: `FileSystemWriter(...,
serialization_format=SerializationFormat.SAFETENSORS)` and torch's `HuggingFaceStorageWriter`.

Facts (torch 2.13, checked by writing both from a 2-rank FSDP2 run; fixtures/make_dcp_safetensors.py):
- FileSystemWriter(SAFETENSORS): `.metadata` as usual; each `__R_I.distcp` holds the pickled bytes
  entries (torch.save blobs: param_groups values) first, then ONE safetensors blob with every tensor
  of that file. Every tensor's storage entry gives the blob's start as its byte offset and numel x
  itemsize as its length, so tensors are found by key in the blob's header, not by offset.
- HuggingFaceStorageWriter: no `.metadata`. `save_distributed=True` writes one
  `shard-0000R-model-00001-of-00001.safetensors` per rank whose `__metadata__.DCP_SHARDING_INFO`
  (JSON) gives each key's `saved_offsets` in the full tensor; with consolidation (or a rank-0
  save) `model-XXXXX-of-YYYYY.safetensors` + `model.safetensors.index.json` hold full tensors
  (the per-rank files stay under `sharded/`). Keys are the flat state dict's:
  `optimizer.state.<fqn>.{exp_avg,exp_avg_sq,step}`. The writer stores tensors only, so betas and
  eps are not in the files (given non-tensor values it writes torch.save blobs before the
  safetensors data, which neither torch nor adamscope can read back).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adamscope.config import ReaderOptions
from adamscope.errors import (
    AdamscopeError,
    CorruptCheckpointError,
    NotAdamError,
    UnsupportedFormatError,
)
from adamscope.readers import guard, safetensors_io
from adamscope.readers.base import inside
from adamscope.vocab import CheckpointInfo, HyperParams, TensorState

log = logging.getLogger(__name__)

SHARDING_KEY = "DCP_SHARDING_INFO"
SHARDED = "sharded"  # where HuggingFaceStorageWriter keeps per-rank files when consolidating
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_STATE_KEY = re.compile(r"^(?:(?P<prefix>.+?)\.)?state\.(?P<fqn>.+)\.(?P<state>[^.]+)$")
_ADAM = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step")
_OTHER_STATE = frozenset({"momentum_buffer", "square_avg", "sum", "exp_inf", "mu_product"})


class RawTensor:
    """One tensor of a safetensors header (at `base` of `file`), read by flat element ranges
    with positional reads: only the requested bytes are read."""

    def __init__(
        self,
        file: Path,
        key: str,
        *,
        base: int = 0,
        sizes: tuple[int, ...] | None = None,
        offsets: tuple[int, ...] | None = None,
    ) -> None:
        import torch

        parsed = safetensors_io.parse(file, base=base)
        entry = parsed.entries.get(key)
        if entry is None:
            raise CorruptCheckpointError(f"{file}: no tensor '{key}' in its safetensors header")
        if entry.dtype not in _DTYPES and entry.dtype not in ("I64", "I32"):
            raise CorruptCheckpointError(f"{file}: '{key}' is {entry.dtype}, not a float tensor")
        self.file, self.key, self.shape = file, key, entry.shape
        if sizes is not None and tuple(sizes) != entry.shape:
            raise CorruptCheckpointError(
                f"{file}: '{key}' is {list(entry.shape)} in the file, {list(sizes)} in .metadata"
            )
        stored = sharding(file, base=base).get(key)
        if offsets is not None and stored is not None and tuple(stored) != tuple(offsets):
            raise CorruptCheckpointError(
                f"{file}: '{key}' saved at offsets {list(stored)}, .metadata says {list(offsets)}"
            )
        name = {"I64": "int64", "I32": "int32"}.get(entry.dtype) or _DTYPES[entry.dtype]
        self.dtype = name
        self.torch_dtype = getattr(torch, name)
        self.itemsize = torch.empty((), dtype=self.torch_dtype).element_size()
        self.numel = math.prod(self.shape)
        if entry.end - entry.start != self.numel * self.itemsize:
            raise CorruptCheckpointError(
                f"{file}: '{key}' has {entry.end - entry.start} bytes for {self.numel} "
                f"{entry.dtype} elements"
            )
        self.pos = parsed.data_start + entry.start

    def read(self, start: int, stop: int) -> Any:
        """Elements [start, stop) in flat order, as a 1-D tensor (see buffers.empty)."""
        from adamscope.readers import buffers

        return buffers.pread(
            self.file, self.pos + start * self.itemsize, stop - start, self.torch_dtype
        )

    def value(self) -> float:
        """The one element of a scalar (a step)."""
        if self.numel != 1:
            raise CorruptCheckpointError(f"{self.file}: '{self.key}' holds {self.numel} values")
        return float(self.read(0, 1)[0])


def sharding(file: Path, *, base: int = 0) -> dict[str, tuple[int, ...]]:
    """key -> saved_offsets from the header's `__metadata__.DCP_SHARDING_INFO` ({} without it)."""
    raw = safetensors_io.parse(file, base=base).metadata.get(SHARDING_KEY)
    if raw is None:
        return {}
    info = guard.parse_json(raw, source=f"{file}: {SHARDING_KEY}")
    if not isinstance(info, dict):
        raise CorruptCheckpointError(f"{file}: {SHARDING_KEY} is not a JSON object")
    out = {}
    for key, value in info.items():
        offsets = value.get("saved_offsets") if isinstance(value, dict) else None
        if not isinstance(offsets, list):
            raise CorruptCheckpointError(f"{file}: {SHARDING_KEY} of '{key}' has no saved_offsets")
        out[key] = tuple(
            guard.finite_int(o, source=file, what=f"offset of '{key}'") for o in offsets
        )
    return out


def _files(folder: Path) -> list[Path]:
    """The safetensors files of an HF-storage folder: the index's, else every `*.safetensors`."""
    if os.path.lexists(folder / safetensors_io.INDEX):
        return safetensors_io.model_files(folder)  # names checked to stay inside the folder
    found = sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith("."))
    return [inside(folder, p, source=folder) for p in found]  # a symlink may not lead out


def _state_keys(keys: list[str]) -> dict[str, dict[str, str]]:
    """fqn -> {state name: key} of the optimizer keys (`<prefix>.state.<fqn>.<state>`)."""
    out: dict[str, dict[str, str]] = {}
    for key in keys:
        match = _STATE_KEY.match(key)
        if match and match["state"] in (*_ADAM, *_OTHER_STATE):
            out.setdefault(match["fqn"], {})[match["state"]] = key
    return out


def _looks_like(path: Path) -> bool:
    """True for a folder (or file) of HF-storage safetensors holding optimizer state keys."""
    try:
        if path.is_dir():
            if (path / ".metadata").exists():
                return False  # a DCP folder: DCPReader
            index = path / safetensors_io.INDEX
            if os.path.lexists(index):  # the index names every key: no header needed
                meta = guard.read_json(index, what="safetensors index")
                keys = list(meta.get("weight_map") or {}) if isinstance(meta, dict) else []
            else:  # per-rank files share the layout: the first header tells
                files = _files(path)
                keys = list(safetensors_io.header(files[0])) if files else []
        elif path.suffix == ".safetensors":
            keys = list(safetensors_io.header(path))
        else:
            return False
    except AdamscopeError:
        return False
    return bool(_state_keys(keys))  # any optimizer's state: a non-Adam one is named, not unknown


class _Piece:
    """Where one chunk of a tensor lives: file, key, offsets in the full tensor, shape."""

    def __init__(self, file: Path, key: str, offsets: tuple[int, ...], shape: tuple[int, ...]):
        self.file, self.key, self.offsets, self.shape = file, key, offsets, shape


class HFStorageReader:
    """Optimizer state written by torch's HuggingFaceStorageWriter (per-rank or consolidated)."""

    name = "dcp-hf-safetensors"

    @classmethod
    def probe(cls, path: Path) -> bool:
        return _looks_like(Path(path))

    def __init__(self, path: Path, *, options: ReaderOptions) -> None:
        self.path = Path(path)
        self.options = options
        self._warned = False
        self.files = _files(self.path) if self.path.is_dir() else [self.path]
        if not self.files:
            raise UnsupportedFormatError(f"{self.path}: no .safetensors files")
        pieces: dict[str, list[_Piece]] = {}
        order: list[str] = []
        self.per_rank = False  # per-rank files: written by safetensors.save, keys sorted by name
        for file in self.files:
            entries = safetensors_io.header(file)
            offsets = sharding(file)
            self.per_rank = self.per_rank or bool(offsets)
            for key, entry in entries.items():
                at = offsets.get(key, (0,) * len(entry.shape))
                if len(at) != len(entry.shape):
                    raise CorruptCheckpointError(
                        f"{file}: '{key}' has {len(entry.shape)} dims but offsets {list(at)}"
                    )
                if key not in pieces:
                    order.append(key)
                pieces.setdefault(key, []).append(_Piece(file, key, at, entry.shape))
        self.pieces = pieces
        states = _state_keys(order)
        prefixes = {
            _STATE_KEY.match(k)["prefix"] or "" for s in states.values() for k in s.values()
        }
        if len(prefixes) > 1:
            raise UnsupportedFormatError(
                f"{self.path}: several optimizers ({', '.join(sorted(prefixes))}); adamscope "
                "reads one optimizer per checkpoint"
            )
        found = set().union(*(s.keys() for s in states.values())) if states else set()
        if not {"exp_avg", "exp_avg_sq"} <= found:
            raise NotAdamError(
                f"{self.path}: optimizer state holds {', '.join(sorted(found)) or 'nothing'}, "
                "no exp_avg/exp_avg_sq"
            )
        self.states = states
        self.names = [n for n in _model_order(list(states), order) if "exp_avg" in states[n]]
        self.sizes = {key: _full_size(key, p, source=self.path) for key, p in pieces.items()}

    def describe(self) -> CheckpointInfo:
        steps = {self._step(n) for n in self.names if "step" in self.states[n]}
        sharded = any(len(p) > 1 for p in self.pieces.values())
        layout = f"{len(self.files)} file(s), " + ("per-rank shards" if sharded else "full tensors")
        return CheckpointInfo(
            path=self.path,
            format=self.name,
            step=int(max(steps)) if steps else None,
            n_tensors=len(self.names),
            n_params=sum(math.prod(self.sizes[self.states[n]["exp_avg"]]) for n in self.names),
            bytes_on_disk=sum(f.stat().st_size for f in self.files),
            notes=(layout, "betas/eps are not stored by HuggingFaceStorageWriter: from options"),
        )

    def _step(self, name: str) -> float:
        key = self.states[name].get("step")
        if key is None:
            hint = " (each step is in one rank's file: is one missing?)" if self.per_rank else ""
            raise CorruptCheckpointError(f"{self.path}: no step for '{name}'{hint}")
        piece = self.pieces[key][0]
        step = RawTensor(piece.file, key).value()
        if step == 0:  # never saved by Adam (state exists after a step): see _sharded_step
            step = self._sharded_step(key, piece.file)
        return float(guard.finite_int(step, source=piece.file, what=f"'{key}'"))

    def _sharded_step(self, key: str, file: Path) -> float:
        """The step of a consolidated checkpoint from its per-rank files under `sharded/`:
        torch's consolidation (2.13) writes every 0-d tensor, the steps, as 0."""
        folder = (self.path if self.path.is_dir() else self.path.parent) / SHARDED
        for shard in _files(folder) if folder.is_dir() else ():
            if key in safetensors_io.header(shard):
                step = RawTensor(shard, key).value()
                if step > 0:
                    if not self._warned:  # once per checkpoint: every step is 0 there
                        self._warned = True
                        log.warning(
                            "%s: steps are stored as 0 (torch's consolidation drops 0-d "
                            "tensors); taken from the per-rank files in %s",
                            file,
                            folder,
                        )
                    return step
        raise CorruptCheckpointError(
            f"{file}: '{key}' is 0, which Adam never saves (torch's consolidation writes 0-d "
            f"tensors as zeros); keep the per-rank files in {SHARDED}/ beside it, or read those"
        )

    def hyper_params(self) -> HyperParams:
        """Betas and eps from ReaderOptions: the files do not store them."""
        writer = "torch's HuggingFaceStorageWriter (tensors only)"
        return options_hyper_params(self.options, source=self.path, writer=writer)

    def iter_tensors(self) -> Iterator[TensorState]:
        hp = self.hyper_params()
        for name in self.names:
            keys = self.states[name]
            if "exp_avg_sq" not in keys:
                raise NotAdamError(f"{self.path}: '{name}' has exp_avg but no exp_avg_sq")
            m_key, v_key, x_key = keys["exp_avg"], keys["exp_avg_sq"], keys.get("max_exp_avg_sq")
            size = self.sizes[m_key]
            if self.sizes[v_key] != size:
                raise CorruptCheckpointError(
                    f"{self.path}: '{m_key}' {list(size)} and '{v_key}' "
                    f"{list(self.sizes[v_key])} differ"
                )
            parts, ordered = _matched(self.pieces, m_key, v_key, x_key, size, source=self.path)
            first = RawTensor(parts[0][1].file, m_key)
            if first.dtype not in _DTYPES.values():
                raise CorruptCheckpointError(
                    f"{first.file}: '{m_key}' is {first.dtype}; Adam moments are floating point"
                )
            ts = TensorState(
                name=name,
                shape=size,
                step=self._step(name),
                hp=hp,
                dtype=first.dtype,
                chunks=lambda n, p=parts: _stream(p, n),
            )
            if self.per_rank:
                ts.notes.append(
                    "order: the per-rank files' (alphabetical) key order, not the model's"
                )
            if not ordered:
                ts.notes.append("sharded along a dim other than 0: chunks follow the shards")
            yield ts


def options_hyper_params(options: ReaderOptions, *, source: Path, writer: str) -> HyperParams:
    """HyperParams from --beta1/--beta2/--eps for formats that do not store them (torch Adam's
    bias correction unless --no-bias-correction).

    Raises:
        AdamscopeError: one of them was not given; the message names the flags.
    """
    missing = [f"--{k}" for k in ("beta1", "beta2", "eps") if getattr(options, k) is None]
    if missing:
        raise AdamscopeError(
            f"{source}: {writer} stores no betas/eps; pass {', '.join(missing)} "
            "(the values the run's optimizer used)"
        )
    return HyperParams(
        beta1=float(options.beta1),
        beta2=float(options.beta2),
        eps=float(options.eps),
        bias_correction=True if options.bias_correction is None else options.bias_correction,
    )


def _model_order(names: list[str], keys: list[str]) -> list[str]:
    """Parameter names in the order of model keys saved beside them (`model.<fqn>` or `<fqn>`),
    else in the order they first appear."""
    position: dict[str, int] = {}
    for i, key in enumerate(keys):
        for name in (key, key.removeprefix("model.")):
            position.setdefault(name, i)
    late = len(keys)
    return sorted(names, key=lambda n: (position.get(n, late), names.index(n)))


def _full_size(key: str, pieces: list[_Piece], *, source: Path) -> tuple[int, ...]:
    """The full tensor's size: the end of its furthest piece along each dim."""
    dims = len(pieces[0].shape)
    if any(len(p.shape) != dims for p in pieces):
        raise CorruptCheckpointError(f"{source}: pieces of '{key}' have different ranks")
    return tuple(max(p.offsets[d] + p.shape[d] for p in pieces) for d in range(dims))


def _matched(
    pieces: dict[str, list[_Piece]],
    m_key: str,
    v_key: str,
    x_key: str | None,
    size: tuple[int, ...],
    *,
    source: Path,
) -> tuple[list[tuple[int, _Piece, _Piece, _Piece | None]], bool]:
    """(flat start, m piece, v piece, vmax piece) sorted by offsets, covering the tensor once;
    and whether the starts are true flat offsets (every piece a dim-0 slab)."""
    v_at = {p.offsets: p for p in pieces[v_key]}
    x_at = {p.offsets: p for p in pieces[x_key]} if x_key else {}
    out, position, ordered = [], 0, True
    for p in sorted(pieces[m_key], key=lambda p: p.offsets):
        other = v_at.get(p.offsets)
        if other is None or other.shape != p.shape:
            raise CorruptCheckpointError(f"{source}: '{v_key}' is not sharded like '{m_key}'")
        ordered = ordered and tuple(p.shape[1:]) == tuple(size[1:])
        out.append((position, p, other, x_at.get(p.offsets)))
        position += math.prod(p.shape)
    _check_tiling(m_key, [p for _, p, _, _ in out], size, source=source)
    if position != math.prod(size):
        raise CorruptCheckpointError(
            f"{source}: the pieces of '{m_key}' hold {position} elements, the tensor "
            f"{list(size)} has {math.prod(size)} (a rank's file is missing?)"
        )
    return out, ordered


def _check_tiling(key: str, pieces: list[_Piece], size: tuple[int, ...], *, source: Path) -> None:
    """Every piece inside the tensor and no two overlapping (else an element would count twice
    while another is missing, and the element count could still add up)."""
    boxes = [tuple(zip(p.offsets, p.shape, strict=True)) for p in pieces]
    for box in boxes:
        if any(o + n > s for (o, n), s in zip(box, size, strict=True)):
            raise CorruptCheckpointError(f"{source}: a piece of '{key}' lies outside the tensor")
    if len(boxes) > 4096:  # pairwise test below; real checkpoints have a piece per rank
        raise UnsupportedFormatError(f"{source}: '{key}' is split into {len(boxes)} pieces")
    for i, a in enumerate(boxes):
        for b in boxes[:i]:
            if all(oa < ob + nb and ob < oa + na for (oa, na), (ob, nb) in zip(a, b, strict=True)):
                if all(n for _, n in a) and all(n for _, n in b):
                    raise CorruptCheckpointError(f"{source}: pieces of '{key}' overlap")


def _stream(parts: list[tuple[int, _Piece, _Piece, _Piece | None]], n: int) -> Iterator[tuple]:
    for start, pm, pv, px in parts:
        m, v = RawTensor(pm.file, pm.key), RawTensor(pv.file, pv.key)
        x = None if px is None else RawTensor(px.file, px.key)
        for a in range(0, m.numel, n):
            b = min(a + n, m.numel)
            yield start + a, m.read(a, b), v.read(a, b), None if x is None else x.read(a, b)
