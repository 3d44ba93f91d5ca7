"""PyTorch Distributed Checkpoint folders (`.metadata` + `*.distcp`), read in one process, chunk by
chunk, without a process group.

Written by FSDP2 `get_state_dict` + `dcp.save` (keys `optim.state.<fqn>.exp_avg`,
`optim.param_groups.<i>.<hp>`), torchtitan (flattened: `optimizer.state.<fqn>...`,
`optimizer.param_groups.<fqn>.lr`) and HF Trainer/accelerate under FSDP (`optimizer_0/`).
`.metadata` is a pickle of torch's checkpoint dataclasses: a restricted unpickler reads it, its
allowlist mapping exactly those classes to inert records. Each tensor chunk is its own torch.save
blob at (file, byte offset, length); we locate its storage entry and read only the requested
elements with positional reads (memory bounded by the chunk size the engine asks for).
"""

from __future__ import annotations

import io
import logging
import math
import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adamscope.config import ReaderOptions
from adamscope.errors import (
    AdamscopeError,
    CorruptCheckpointError,
    NotAdamError,
    UnsafePickleError,
    UnsupportedFormatError,
    torch_reason,
)
from adamscope.readers import guard
from adamscope.readers.base import child_path
from adamscope.readers.optim_state import hyper_params
from adamscope.readers.torchzip import WindowFile, member_data_start, read_member
from adamscope.readers.unpickler import check_pickle
from adamscope.vocab import CheckpointInfo, TensorState

log = logging.getLogger(__name__)

_DCP = "torch.distributed.checkpoint.metadata."
_RECORDS = frozenset(
    _DCP + n
    for n in (
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
) | {
    "torch.distributed.checkpoint.filesystem._StorageInfo",
    # Megatron-core's torch_dist strategy keeps the save plans in the metadata (cached for the
    # next save): the planner's classes, inert records like the rest
    "torch.distributed.checkpoint.planner.SavePlan",
    "torch.distributed.checkpoint.planner.WriteItem",
    "torch.distributed.checkpoint.planner.WriteItemType",
    "torch.distributed.checkpoint.planner.TensorWriteData",
    # OLMo-core's writer pickles its own copy (relative_path, offset, length: as torch's)
    "olmo_core.distributed.checkpoint.filesystem._StorageInfo",
}
# where trainers put the DCP folder inside a step folder: HF Trainer/accelerate under FSDP,
# OLMo-core's trainer (`stepN/model_and_optim/` beside `train/rankR.pt`)
_SUBFOLDERS = ("optimizer_0", "model_and_optim")
_DTYPES = frozenset(
    {"float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8"}
    | {"bool", "float8_e4m3fn", "float8_e5m2"}
)
# per-parameter state names of torch optimizers: only these count as optimizer state (a model
# key such as `encoder.state.proj.weight` must not)
_STATE_NAMES = frozenset(
    {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step", "momentum_buffer", "square_avg"}
    | {"acc_delta", "sum", "exp_inf", "mu", "eta", "ax", "prev", "step_size", "grad_avg"}
    | {"exp_avg_sq_row", "exp_avg_sq_col", "state1", "state2", "qmap1", "qmap2"}
)


class _Record:
    """Inert stand-in for one of torch's checkpoint dataclasses: records args and pickled state."""

    qualname = "?"

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def get(self, field: str, default: Any = None) -> Any:
        state = self.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict, slots) state of slotted dataclasses
        return state.get(field, default) if isinstance(state, dict) else default


_record_types = {q: type(q.rsplit(".", 1)[1], (_Record,), {"qualname": q}) for q in _RECORDS}


class _MetadataUnpickler(pickle.Unpickler):
    """Allows only torch's DCP metadata classes (as records), torch.Size, dtypes and paths."""

    def __init__(self, file: io.BufferedIOBase, *, source: Path) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        if qualname in _record_types:
            return _record_types[qualname]
        if qualname == "torch.Size":
            return tuple
        if module == "torch" and name in _DTYPES:
            return name  # dtypes are kept by name
        if qualname == "torch.serialization._get_layout":
            return str
        if qualname in ("pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.Path"):
            return lambda *parts: "/".join(str(p) for p in parts)
        if qualname == "collections.OrderedDict":
            return dict
        raise UnsafePickleError(
            f"{self.source}: refusing to load global '{qualname}' (not a DCP metadata class; "
            "nothing was executed)"
        )


@dataclass(frozen=True)
class _Chunk:
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: Path
    byte_offset: int
    length: int
    key: str = ""  # the flat key: how a safetensors-serialized chunk is found in its blob


@dataclass(frozen=True)
class _Entry:
    """One flat key of the checkpoint: a sharded tensor (dtype, size, chunks) or a bytes object."""

    key: str
    path: tuple[Any, ...]
    dtype: str | None
    size: tuple[int, ...] | None
    chunks: tuple[_Chunk, ...]


def read_metadata(folder: Path) -> dict[str, _Entry]:
    """Parses `<folder>/.metadata` safely into flat key -> _Entry (in the file's key order)."""
    source = folder / ".metadata"
    data = guard.bounded_read(source, limit=guard.DCP_METADATA_BYTES, what="DCP .metadata")
    try:
        check_pickle(data, source=source)  # memo indices, shared-reference expansion, depth
        md = _MetadataUnpickler(io.BytesIO(data), source=source).load()
    except AdamscopeError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        TypeError,
        ValueError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        UnicodeDecodeError,
        MemoryError,
        RecursionError,
    ) as e:
        raise CorruptCheckpointError(
            f"{source}: cannot unpickle DCP metadata ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(md, _Record) or not isinstance(md.get("state_dict_metadata"), dict):
        raise CorruptCheckpointError(f"{source}: not a DCP Metadata object")
    try:  # every record's fields as torch writes them, or one line saying which is not
        entries = _entries(md, folder, source)
    except (AttributeError, TypeError, KeyError, ValueError) as e:
        detail = " ".join(str(e).split())[:120]
        raise CorruptCheckpointError(
            f"{source}: malformed DCP metadata ({type(e).__name__}: {detail})"
        ) from None
    _check_files(entries)
    return entries


def _entries(md: _Record, folder: Path, source: Path) -> dict[str, _Entry]:
    """The records of a DCP Metadata as flat key -> _Entry, every number checked."""
    storage: dict[tuple[str, tuple[int, ...] | None], Any] = {}
    for index, info in (md.get("storage_data") or {}).items():
        offset = index.get("offset")
        offsets = None if offset is None else _ints(offset, source=source, what="an offset")
        storage[(index.get("fqn"), offsets)] = info
    planner = md.get("planner_data") or {}
    entries = {}
    files: dict[str, Path] = {}  # a rank's file is named by thousands of chunks: resolved once
    for key, meta in md.get("state_dict_metadata").items():
        path = tuple(planner.get(key, ())) or tuple(key.split("."))
        chunks = []
        raw_chunks = meta.get("chunks") if meta.qualname.endswith("TensorStorageMetadata") else None
        for c in raw_chunks or [None]:
            offsets = None if c is None else _ints(c.get("offsets"), source=source, what="offsets")
            info = storage.get((key, offsets))
            if info is None:
                raise CorruptCheckpointError(f"{source}: no storage entry for '{key}' at {offsets}")
            if info.get("transform_descriptors"):
                raise UnsupportedFormatError(
                    f"{source}: '{key}' is stored with transforms "
                    f"{info.get('transform_descriptors')} (compressed DCP is not supported)"
                )
            chunks.append(
                _Chunk(
                    offsets=offsets or (),
                    sizes=() if c is None else _ints(c.get("sizes"), source=source, what="sizes"),
                    file=_file(files, folder, str(info.get("relative_path")), source),
                    byte_offset=guard.finite_int(
                        info.get("offset"), source=source, what=f"byte offset of '{key}'"
                    ),
                    length=guard.finite_int(
                        info.get("length"), source=source, what=f"length of '{key}'"
                    ),
                    key=key,
                )
            )
        dtype, size = None, None
        if raw_chunks is not None:
            props = meta.get("properties")
            if not isinstance(props, _Record):
                raise CorruptCheckpointError(
                    f"{source}: '{key}' has no tensor properties (dtype) but {type(props).__name__}"
                )
            # TensorProperties pickles as a tuple (dtype, layout, ...) in recent torch, else a dict
            dtype = props.state[0] if isinstance(props.state, tuple) else props.get("dtype")
            size = _ints(meta.get("size"), source=source, what=f"size of '{key}'")
        entries[key] = _Entry(key, path, dtype, size, tuple(chunks))
    return entries


def _file(files: dict[str, Path], folder: Path, rel: str, source: Path) -> Path:
    """A chunk's file, resolved and checked to lie inside the folder once per name."""
    path = files.get(rel)
    if path is None:
        path = files[rel] = child_path(folder, rel, source=source)
    return path


def _ints(x: Any, *, source: Path, what: str) -> tuple[int, ...]:
    """A list of non-negative integers read from the metadata (offsets, sizes)."""
    if not isinstance(x, tuple | list):
        raise CorruptCheckpointError(f"{source}: {what} is a {type(x).__name__}, not integers")
    if all(type(v) is int and 0 <= v <= _INT_MAX for v in x):  # as torch writes them: fast
        return tuple(x)
    return tuple(guard.finite_int(v, source=source, what=what) for v in x)


_INT_MAX = 1 << 62  # guard.finite_int's bound


def _check_files(entries: dict[str, _Entry]) -> None:
    """Every file a chunk names is a regular file and every byte range lies inside its file."""
    sizes: dict[Path, int] = {}
    for entry in entries.values():
        for c in entry.chunks:
            if c.file not in sizes:
                sizes[c.file] = guard.regular_file(c.file, what=".distcp file")
            _check_span(c, sizes[c.file])


class _BlobTensor:
    """The tensor inside one chunk's torch.save blob, read by element ranges with pread."""

    def __init__(self, chunk: _Chunk) -> None:
        self.chunk = chunk
        _check_span(chunk)
        with open(chunk.file, "rb") as f:
            view = WindowFile(f, chunk.byte_offset, chunk.length)
            try:
                zf = zipfile.ZipFile(view)
            except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as e:
                raise CorruptCheckpointError(
                    f"{chunk.file}: the blob at byte {chunk.byte_offset} is not a readable "
                    f"torch.save zip ({type(e).__name__}: {str(e)[:120]})"
                ) from e
            with zf:
                pkls = [n for n in zf.namelist() if n.endswith("data.pkl")]
                if not pkls:
                    raise CorruptCheckpointError(
                        f"{chunk.file}: the blob at byte {chunk.byte_offset} holds no data.pkl"
                    )
                pkl = min(pkls, key=len)
                prefix = pkl[: -len("data.pkl")]
                data = read_member(zf, pkl, limit=guard.PICKLE_BYTES, source=chunk.file)
                key, self.offset, self.shape, stride, self.dtype = _blob_tensor(data, chunk.file)
                try:
                    info = zf.getinfo(f"{prefix}data/{key}")
                except KeyError:
                    raise CorruptCheckpointError(
                        f"{chunk.file}: the blob at byte {chunk.byte_offset} has no storage "
                        f"{guard.brief(key, 40)} for the tensor its data.pkl describes"
                    ) from None
                if info.compress_type != zipfile.ZIP_STORED:
                    raise UnsupportedFormatError(f"{chunk.file}: compressed chunk storage")
                self.data_start = member_data_start(
                    f.fileno(), info, base=chunk.byte_offset, source=chunk.file
                )
                self.data_end = self.data_start + info.file_size
        expected = [math.prod(self.shape[i + 1 :]) for i in range(len(self.shape))]
        if any(s != e for s, e, n in zip(stride, expected, self.shape, strict=True) if n > 1):
            raise UnsupportedFormatError(f"{chunk.file}: non-contiguous chunk tensor")
        import torch

        self.torch_dtype = getattr(torch, self.dtype)
        self.itemsize = torch.empty((), dtype=self.torch_dtype).element_size()
        self.numel = math.prod(self.shape)
        # the tensor must fit its storage entry, and the entry its blob: else reads would return
        # the bytes of whatever follows (the next tensor) as this one's values
        end = self.data_start + (self.offset + self.numel) * self.itemsize
        if end > min(self.data_end, chunk.byte_offset + chunk.length):
            raise CorruptCheckpointError(
                f"{chunk.file}: chunk tensor of {self.numel} elements runs past its storage "
                f"entry (blob at byte {chunk.byte_offset}, {chunk.length} bytes)"
            )

    def read(self, start: int, stop: int) -> Any:
        """Elements [start, stop) of the chunk in flat order, as a 1-D tensor (see buffers.empty)."""
        from adamscope.readers import buffers

        pos = self.data_start + (self.offset + start) * self.itemsize
        return buffers.pread(self.chunk.file, pos, stop - start, self.torch_dtype)

    def read_into(self, start: int, stop: int, out: Any) -> None:
        """Elements [start, stop) into the contiguous 1-D CPU tensor `out` (of this dtype)."""
        from adamscope.readers import buffers

        if out.dtype != self.torch_dtype or not 0 <= start <= stop <= self.numel:
            out.copy_(self.read(start, stop))
            return
        buffers.pread_into(
            self.chunk.file, self.data_start + (self.offset + start) * self.itemsize, out
        )


_BLOB_PICKLES: dict[bytes, tuple] = {}  # data.pkl bytes -> the one tensor record it holds
_BLOB_PICKLES_MAX = 4096


def _blob_tensor(data: bytes, file: Path) -> tuple:
    """(storage key, offset, shape, stride, dtype) of the one tensor a chunk blob's data.pkl
    holds, after the pickle checks. The shards of a tensor (and tensors of one shape) have the
    same data.pkl bytes, so a checkpoint of thousands of blobs has a few hundred different ones:
    each is checked and unpickled once (the record is a function of the bytes alone)."""
    from adamscope.readers.unpickler import RestrictedUnpickler

    record = _BLOB_PICKLES.get(data)
    if record is not None:
        return record
    check_pickle(data, source=f"{file}: chunk data.pkl")
    found: list[tuple] = []

    def make_tensor(storage, offset, shape, stride, dtype):  # noqa: ANN001, ANN202
        found.append((storage.key, offset, tuple(shape), tuple(stride), dtype))
        return found[-1]

    RestrictedUnpickler(io.BytesIO(data), source=str(file), make_tensor=make_tensor).load()
    if len(found) != 1:
        raise CorruptCheckpointError(f"{file}: chunk blob holds {len(found)} tensors")
    if len(_BLOB_PICKLES) >= _BLOB_PICKLES_MAX:
        _BLOB_PICKLES.clear()
    _BLOB_PICKLES[data] = found[0]
    return found[0]


_SMALL_BYTES = 64 << 20  # a step, an lr, a param-group `params` list of names (~100 B per name)


def _check_span(chunk: _Chunk, size: int | None = None) -> None:
    """The chunk's file is a regular file (a FIFO named .distcp would block the open) and its
    byte range lies inside it (a huge length in a sparse file is refused before any read)."""
    if size is None:
        size = guard.regular_file(chunk.file, what=".distcp file")
    if chunk.byte_offset < 0 or chunk.length < 0 or chunk.byte_offset + chunk.length > size:
        raise CorruptCheckpointError(
            f"{chunk.file}: entry at byte {chunk.byte_offset} of {chunk.length} bytes lies "
            f"outside the file ({size} bytes)"
        )


def _is_torch_blob(chunk: _Chunk) -> bool:
    """Whether the chunk's bytes start a torch.save zip; else they are DCP's safetensors
    serialization (the chunk's offset is where its file's safetensors blob starts)."""
    with open(chunk.file, "rb") as f:
        return os.pread(f.fileno(), 2, chunk.byte_offset) == b"PK"


def chunk_tensor(chunk: _Chunk) -> Any:
    """The lazy tensor of one chunk (`numel`, `read(start, stop)`), whichever serialization."""
    _check_span(chunk)
    if _is_torch_blob(chunk):
        t: Any = _BlobTensor(chunk)
    else:
        from adamscope.readers.dcp_safetensors import RawTensor

        t = RawTensor(
            chunk.file, chunk.key, base=chunk.byte_offset, sizes=chunk.sizes, offsets=chunk.offsets
        )
    # the metadata's chunk and the tensor stored for it must agree, or the pieces would be read
    # at the wrong places (or past what the blob holds)
    if t.numel != math.prod(chunk.sizes):
        raise CorruptCheckpointError(
            f"{chunk.file}: the tensor at byte {chunk.byte_offset} holds {t.numel} elements where "
            f"the metadata's chunk of '{chunk.key}' has {math.prod(chunk.sizes)} {list(chunk.sizes)}"
        )
    return t


def load_small(chunk: _Chunk) -> Any:
    """A bytes object or a tiny tensor (step, hyper-parameters): torch.load(weights_only=True),
    or a tensor of a safetensors-serialized file read by key."""
    import torch

    _check_span(chunk)
    if chunk.length > _SMALL_BYTES:
        raise CorruptCheckpointError(
            f"{chunk.file}: a {chunk.length} byte entry where a step or hyper-parameter "
            f"(at most {_SMALL_BYTES} bytes) is stored"
        )
    if chunk.key and not _is_torch_blob(chunk):  # a step in a safetensors-serialized file
        from adamscope.readers.dcp_safetensors import RawTensor

        try:
            t = RawTensor(chunk.file, chunk.key, base=chunk.byte_offset, sizes=chunk.sizes)
        except CorruptCheckpointError as e:
            raise CorruptCheckpointError(
                f"{chunk.file}: entry '{chunk.key}' at byte {chunk.byte_offset} is neither a "
                f"torch.save blob nor safetensors data ({str(e).removeprefix(f'{chunk.file}: ')})"
            ) from None
        return t.read(0, t.numel).reshape(t.shape).clone()
    with open(chunk.file, "rb") as f:
        blob = os.pread(f.fileno(), chunk.length, chunk.byte_offset)
    if len(blob) != chunk.length:
        raise CorruptCheckpointError(f"{chunk.file}: truncated at byte {chunk.byte_offset}")
    if blob[:2] == b"PK":  # torch.save blob: its pickle scanned first (torch.load would hash a DAG)
        try:
            with zipfile.ZipFile(io.BytesIO(blob)) as zf:
                pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
                for n in pkl:
                    data = read_member(zf, n, limit=_SMALL_BYTES, source=chunk.file)
                    check_pickle(data, source=f"{chunk.file}: entry data.pkl")
        except zipfile.BadZipFile as e:
            raise CorruptCheckpointError(f"{chunk.file}: entry is not a zip ({e})") from None
    try:
        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafePickleError(
            f"{chunk.file}: value of '{chunk.key}' refused by weights_only ({torch_reason(e)})"
        ) from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise CorruptCheckpointError(
            f"{chunk.file}: cannot read entry '{chunk.key}' ({torch_reason(e)})"
        ) from None


_STATE_RE = re.compile(r"^(?:(?P<prefix>.+?)\.)?state\.(?P<fqn>.+)\.(?P<key>[^.]+)$")
_GROUP_RE = re.compile(r"^(?:(?P<prefix>.+?)\.)?param_groups\.(?P<owner>.+)\.(?P<hp>[^.]+)$")


def _split(entry: _Entry, pattern: re.Pattern[str], marker: str) -> tuple[str, str, str] | None:
    """(prefix, owner, leaf) of a state / param_groups key; the planner's key path when exact."""
    path = entry.path
    if len(path) >= 3 and path[-3] == marker:
        return ".".join(str(p) for p in path[:-3]), str(path[-2]), str(path[-1])
    match = pattern.match(".".join(str(p) for p in path))
    if match is None:
        return None
    groups = match.groups()
    return groups[0] or "", groups[1], groups[2]


def is_dcp_folder(path: Path) -> bool:
    return path.is_dir() and (path / ".metadata").is_file() and any(path.glob("*.distcp"))


class DCPReader:
    """A torch.distributed.checkpoint folder holding Adam optimizer state."""

    name = "dcp"

    @classmethod
    def probe(cls, path: Path) -> bool:
        path = Path(path)
        return is_dcp_folder(path) or any(is_dcp_folder(path / s) for s in _SUBFOLDERS)

    def __init__(self, path: Path, *, options: ReaderOptions) -> None:
        self.path = Path(path)
        self.options = options
        inner = [self.path / s for s in _SUBFOLDERS if is_dcp_folder(self.path / s)]
        self.folder = self.path if is_dcp_folder(self.path) or not inner else inner[0]
        if not is_dcp_folder(self.folder):
            raise UnsupportedFormatError(f"{self.path}: no .metadata + *.distcp (not a DCP folder)")
        if (self.folder / "common.pt").is_file() and (self.folder / "metadata.json").is_file():
            raise UnsupportedFormatError(
                f"{self.folder}: a Megatron torch_dist checkpoint (common.pt + metadata.json): "
                "read it with the megatron-torch-dist reader (auto-detected)"
            )
        self.entries = read_metadata(self.folder)
        self.states: dict[str, dict[str, _Entry]] = {}
        self.groups: dict[str, dict[str, _Entry]] = {}
        prefixes = set()
        for entry in self.entries.values():
            parsed = _split(entry, _STATE_RE, "state")
            if parsed and parsed[2] in _STATE_NAMES:
                self.states.setdefault(parsed[1], {})[parsed[2]] = entry
                prefixes.add(parsed[0])
                continue
            parsed = _split(entry, _GROUP_RE, "param_groups")
            if parsed:
                self.groups.setdefault(parsed[1], {})[parsed[2]] = entry
        if not self.states:
            raise UnsupportedFormatError(
                f"{self.folder}: DCP checkpoint without optimizer state keys "
                "('<prefix>.state.<fqn>.exp_avg'); is it a model-only checkpoint?"
            )
        if len(prefixes) > 1:
            raise UnsupportedFormatError(
                f"{self.folder}: several optimizers ({', '.join(sorted(prefixes))}); "
                "adamscope reads one optimizer per checkpoint"
            )
        self.prefix = prefixes.pop()
        found = set().union(*(s.keys() for s in self.states.values()))
        if not {"exp_avg", "exp_avg_sq"} <= found:
            raise NotAdamError(
                f"{self.folder}: optimizer state holds {', '.join(sorted(found))}, "
                "no exp_avg/exp_avg_sq"
            )
        bad = [n for n, s in self.states.items() if "exp_avg" in s and s["exp_avg"].size is None]
        if bad:
            raise CorruptCheckpointError(f"{self.folder}: exp_avg of '{bad[0]}' is not a tensor")
        self.names = self._model_order([n for n, s in self.states.items() if "exp_avg" in s])

    def _model_order(self, names: list[str]) -> list[str]:
        """Parameter names in the order of the model keys saved beside them, when there are any."""
        position: dict[str, int] = {}
        for i, key in enumerate(self.entries):
            for name in (key, key.removeprefix("model.")):
                position.setdefault(name, i)
        late = len(self.entries)
        return sorted(names, key=lambda n: (position.get(n, late), names.index(n)))

    def describe(self) -> CheckpointInfo:
        numel = sum(math.prod(self.states[n]["exp_avg"].size or ()) for n in self.names)
        step = self._step(self.names[0]) if self.names else None
        layout = "flattened param_groups" if self._flat_groups() else "param_groups by index"
        return CheckpointInfo(
            path=self.path,
            format=self.name,
            step=None if step is None else int(step),
            n_tensors=len(self.names),
            n_params=numel,
            bytes_on_disk=sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file()),
            notes=(f"optimizer keys under '{self.prefix or '(top level)'}', {layout}",),
        )

    def _flat_groups(self) -> bool:
        return any(not owner.isdigit() for owner in self.groups)

    def _step(self, name: str) -> float:
        entry = self.states[name].get("step")
        if entry is None:
            raise CorruptCheckpointError(f"{self.folder}: no step for '{name}'")
        value = load_small(entry.chunks[0])
        return float(value.item() if hasattr(value, "item") else value)

    def _group_of(self) -> dict[str, dict[str, Any]]:
        """name -> its param group's hyper-parameters (loaded from the small bytes entries)."""
        loaded = {
            owner: {hp: load_small(e.chunks[0]) for hp, e in hps.items()}
            for owner, hps in self.groups.items()
        }
        if self._flat_groups():
            return {n: loaded[n] for n in self.names if n in loaded}
        out: dict[str, dict[str, Any]] = {}
        for owner in sorted(loaded, key=int):
            group = loaded[owner]
            members = group.get("params")
            for name in self.names if members is None and len(loaded) == 1 else members or ():
                out[str(name)] = group
        return out

    def iter_tensors(self) -> Iterator[TensorState]:
        groups = self._group_of()
        for name in self.names:
            state = self.states[name]
            if "exp_avg_sq" not in state:
                raise NotAdamError(f"{self.folder}: '{name}' has exp_avg but no exp_avg_sq")
            group = groups.get(name)
            if group is None:
                raise CorruptCheckpointError(f"{self.folder}: no param_groups entry for '{name}'")
            m, v, vmax = state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq")
            if m.size != v.size:
                raise CorruptCheckpointError(
                    f"{self.folder}: exp_avg/exp_avg_sq sizes differ for '{name}'"
                )
            pieces, ordered = _pieces(m, v, vmax, source=self.folder)
            ts = TensorState(
                name=name,
                shape=m.size or (),
                step=self._step(name),
                hp=hyper_params(group, source=f"{self.folder} ({name})", options=self.options),
                dtype=m.dtype or "float32",
                chunks=lambda n, p=pieces: _stream(p, n),
            )
            if not ordered:
                ts.notes.append("sharded along a dim other than 0: chunks follow the DCP shards")
            yield ts


def _pieces(
    m: _Entry, v: _Entry, vmax: _Entry | None, *, source: Path
) -> tuple[list[tuple[int, _Chunk, _Chunk, _Chunk | None]], bool]:
    """Matching (start, m chunk, v chunk, vmax chunk) of a tensor, sorted by chunk offsets, and
    whether the starts are true flat offsets: they are when every chunk is a dim-0 slab (FSDP),
    since sorted slabs that cover the tensor are consecutive flat ranges."""
    size = m.size or ()
    by_offset = {c.offsets: c for c in v.chunks}
    max_by_offset = {c.offsets: c for c in vmax.chunks} if vmax else {}
    out, position, ordered = [], 0, True
    for c in sorted(m.chunks, key=lambda c: c.offsets):
        other = by_offset.get(c.offsets)
        if other is None or other.sizes != c.sizes:
            raise CorruptCheckpointError(f"{source}: '{v.key}' is not sharded like '{m.key}'")
        ordered = ordered and tuple(c.sizes[1:]) == tuple(size[1:])
        out.append((position, c, other, max_by_offset.get(c.offsets)))
        position += math.prod(c.sizes)
    if position != math.prod(size):
        raise CorruptCheckpointError(f"{source}: chunks of '{m.key}' cover {position} elements")
    return out, ordered


def _stream(pieces: list[tuple[int, _Chunk, _Chunk, _Chunk | None]], n: int) -> Iterator[tuple]:
    """Chunks of at most n elements over the shards (from many .distcp files): each shard's
    blobs are parsed and read on `fanout`'s reader threads."""
    from adamscope.readers import fanout

    def sources(cm: _Chunk, cv: _Chunk, cmax: _Chunk | None) -> fanout.Sources:
        m, v = chunk_tensor(cm), chunk_tensor(cv)
        return m, v, None if cmax is None else chunk_tensor(cmax)

    return fanout.stream(
        [
            fanout.Piece(start, math.prod(cm.sizes), lambda a=cm, b=cv, c=cmax: sources(a, b, c))
            for start, cm, cv, cmax in pieces
        ],
        n,
    )
