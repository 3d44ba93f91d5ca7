"""The one way adamscope reads safetensors files: shapes from the header, flat ranges of a tensor
through `safe_open(...).get_slice(...)` (only the boxes a range covers are read), lazy tensors.

Used by the MLX reader, by the HF Trainer reader (names and shapes of model.safetensors) and by
every reader's `weights()` (the model weights stored beside the optimizer state).
"""

from __future__ import annotations

import functools
import gc
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from adamscope.errors import CorruptCheckpointError
from adamscope.readers import guard

if TYPE_CHECKING:
    import torch

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def flat_slices(shape: tuple[int, ...], a: int, b: int) -> Iterator[tuple[slice, ...]]:
    """Index tuples of boxes that together cover flat (row-major) elements [a, b) in order.

    get_slice indexes per dimension; a flat range splits into at most a few boxes per dimension.
    """
    if not shape:
        yield ()
        return
    if len(shape) == 1:
        yield (slice(a, b),)
        return
    inner = math.prod(shape[1:])
    r0, c0 = divmod(a, inner)
    r1, c1 = divmod(b, inner)
    if r0 == r1:
        for rest in flat_slices(shape[1:], c0, c1):
            yield (slice(r0, r0 + 1), *rest)
        return
    if c0:
        for rest in flat_slices(shape[1:], c0, inner):
            yield (slice(r0, r0 + 1), *rest)
        r0 += 1
    if r1 > r0:
        yield (slice(r0, r1), *(slice(None),) * (len(shape) - 1))
    if c1:
        for rest in flat_slices(shape[1:], 0, c1):
            yield (slice(r1, r1 + 1), *rest)


def read_flat(handle: Any, name: str, shape: tuple[int, ...], a: int, b: int) -> torch.Tensor:
    """Flat elements [a, b) of tensor `name` of an open `safe_open` handle."""
    import torch

    if not shape:
        return handle.get_tensor(name).reshape(1)[a:b]
    sl = handle.get_slice(name)
    parts = [sl[idx].reshape(-1) for idx in flat_slices(shape, a, b)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class Entry(NamedTuple):
    """One tensor of a safetensors header: dtype code ("F32", ...), shape, data byte range."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


class Parsed(NamedTuple):
    """A parsed safetensors header: its tensors, its `__metadata__` (str -> str, {} when absent)
    and the absolute byte position where tensor data begins (entry ranges are relative to it)."""

    entries: dict[str, Entry]
    metadata: dict[str, str]
    data_start: int


def header(file: Path) -> dict[str, Entry]:
    """name -> Entry of every tensor of a safetensors file, in the file's order; parsed once per
    file version (cached: probes, readers and naming all ask, a header may hold 10^5 tensors).

    Checked before anything is parsed: a regular file, a header under the format's limit
    (guard.SAFETENSORS_HEADER_BYTES) that fits the file; then every entry's dtype, shape and
    data range, which must lie inside the file.

    Raises:
        CorruptCheckpointError: naming the file and what is wrong.
    """
    return parse(Path(file)).entries


def parse(file: Path, *, base: int = 0) -> Parsed:
    """The header of the safetensors data that starts at byte `base` of `file` (0 for a
    .safetensors file; DCP's safetensors serialization writes it after the `.distcp` file's
    pickled entries), with the checks of `header`."""
    size = guard.regular_file(Path(file), what="safetensors file")
    return _header(str(file), os.stat(file).st_mtime_ns, size, base)


@functools.lru_cache(maxsize=4)
def _header(file: str, mtime_ns: int, size: int, base: int = 0) -> Parsed:
    where = "" if base == 0 else f" at byte {base}"
    with open(file, "rb") as f:
        f.seek(base)
        raw = f.read(8)
        if raw[:4] == b"PK\x03\x04":  # the length would read as ~10^17: name what it is
            raise CorruptCheckpointError(
                f"{file}: a zip archive (a torch.save file?){where}, not safetensors data"
            )
        if len(raw) < 8:
            raise CorruptCheckpointError(
                f"{file}: truncated safetensors header{where} ({size} bytes)"
            )
        n = int.from_bytes(raw, "little")
        if n > guard.SAFETENSORS_HEADER_BYTES:
            raise CorruptCheckpointError(
                f"{file}: safetensors header{where} of {n} bytes, over the format's limit of "
                f"{guard.SAFETENSORS_HEADER_BYTES}"
            )
        if base + 8 + n > size:
            raise CorruptCheckpointError(
                f"{file}: truncated safetensors header{where} (says {n} bytes, the file has "
                f"{size - base - 8})"
            )
        raw = f.read(n)
    gc_was_on = gc.isenabled()
    gc.disable()  # millions of small acyclic objects: the cyclic GC would double the time
    try:
        meta = guard.parse_json(raw, source=file)
        if not isinstance(meta, dict):
            raise CorruptCheckpointError(f"{file}: safetensors header is not a JSON object")
        extra = meta.pop("__metadata__", None) or {}
        if not isinstance(extra, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
        ):
            raise CorruptCheckpointError(
                f"{file}: safetensors __metadata__ is not a map of strings to strings"
            )
        out = _entries(meta, file=file)
    finally:
        if gc_was_on:
            gc.enable()
    start = base + 8 + n
    end = max((e.end for e in out.values()), default=0)
    if start + end > size:
        raise CorruptCheckpointError(
            f"{file}: truncated safetensors data (tensors end at byte {start + end}, the file "
            f"has {size})"
        )
    return Parsed(out, extra, start)


def _entries(meta: dict[str, Any], *, file: str) -> dict[str, Entry]:
    """Every header entry checked and as an Entry (one tight loop: 10^5-10^6 entries)."""
    out: dict[str, Entry] = {}
    for name, v in meta.items():
        try:
            dtype, shape, (a, b) = v["dtype"], v["shape"], v["data_offsets"]
            ok = type(dtype) is str and type(shape) is list and type(a) is int and type(b) is int
            ok = ok and 0 <= a <= b and all(type(d) is int and d >= 0 for d in shape)
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise CorruptCheckpointError(
                f"{file}: unreadable safetensors header entry {str(name)[:80]!r} (needs dtype, "
                "shape and data_offsets of non-negative integers)"
            )
        out[name] = Entry(dtype, tuple(shape), a, b)
    return out


def shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor in one safetensors file (its header only)."""
    return {k: e.shape for k, e in header(file).items()}


class Handles:
    """One open `safe_open` handle per file, reused for every read (opening one parses the whole
    header again: per tensor, that is quadratic in the number of tensors)."""

    def __init__(self) -> None:
        self._open: dict[Path, Any] = {}

    def get(self, file: Path) -> Any:
        handle = self._open.get(file)
        if handle is None:
            from safetensors import safe_open

            header(file)  # the checks, before the library opens it
            try:
                handle = self._open[file] = safe_open(str(file), framework="pt")
            except Exception as e:  # noqa: BLE001 - the library's errors, as one line naming the file
                raise CorruptCheckpointError(
                    f"{file}: not a readable safetensors file ({type(e).__name__}: {str(e)[:120]})"
                ) from e
        return handle


def model_files(folder: Path) -> list[Path]:
    """The model.safetensors file(s) of a Hugging Face folder (an index's shards, or the one file);
    empty when there are none. Shard names from the index must be plain names inside `folder`.

    Raises:
        CorruptCheckpointError: the index is not valid JSON or names a file outside `folder`.
    """
    from adamscope.readers.base import child_path

    index = folder / INDEX
    if os.path.lexists(index):  # a FIFO or a sparse file of GBs is refused, not read
        meta = guard.read_json(index, what="safetensors index")
        weight_map = meta.get("weight_map") if isinstance(meta, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()
        ):
            raise CorruptCheckpointError(
                f"{index}: not a safetensors index (no 'weight_map' of tensor name -> file name)"
            )
        names = sorted(set(weight_map.values()))
        return [child_path(folder, n, source=index) for n in names]
    return [folder / SINGLE] if os.path.lexists(folder / SINGLE) else []


class SafetensorsTensor:
    """A lazy tensor of a safetensors file: `shape`, `read(start, stop)` in flat order."""

    def __init__(
        self, file: Path, name: str, shape: tuple[int, ...], handles: Handles | None = None
    ) -> None:
        self.file, self.name, self.shape = file, name, shape
        self.handles = handles or Handles()

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def read(self, start: int, stop: int) -> torch.Tensor:
        return read_flat(self.handles.get(self.file), self.name, self.shape, start, stop)


def lazy_tensors(files: Sequence[Path], *, rename: Any = None) -> dict[str, SafetensorsTensor]:
    """name -> SafetensorsTensor over several files (`rename(name)` maps stored names)."""
    out: dict[str, SafetensorsTensor] = {}
    handles = Handles()
    for file in files:
        for name, shape in shapes(file).items():
            out[rename(name) if rename else name] = SafetensorsTensor(file, name, shape, handles)
    return out
