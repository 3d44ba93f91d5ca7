"""Lazy reading of torch.save zip files: `load_lazy` returns the object tree with LazyTensor leaves.

A torch zip file holds `<archive>/data.pkl` (the pickled object tree) and one *uncompressed* entry
`<archive>/data/<key>` per storage. We unpickle only `data.pkl` (restricted, see unpickler.py),
locate each storage entry's data offset from the zip headers once, and serve
`LazyTensor.read(start, stop)` with positional reads into a freshly allocated tensor: memory is
bounded by what the caller asks for.
"""

from __future__ import annotations

import copy
import functools
import io
import logging
import math
import os
import pickle
import struct
import threading
import warnings
import weakref
import zipfile
import zlib
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamscope.errors import (
    AdamscopeError,
    CorruptCheckpointError,
    UnsupportedFormatError,
)
from adamscope.readers import guard
from adamscope.readers.unpickler import RestrictedUnpickler, StorageRef, check_pickle

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")  # zip local file header, 30 bytes
_LOCAL_MAGIC = 0x04034B50
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MATERIALIZE_LIMIT = 1 << 28  # bytes; materialize() refuses larger tensors
_GATHER_WINDOW = 1 << 20  # elements read at once when gathering a non-contiguous tensor


class _Archive:
    """One torch zip file: entry table, data offsets, and a read-only file descriptor."""

    def __init__(self, path: Path, entries: dict[str, zipfile.ZipInfo], prefix: str) -> None:
        self.path = path
        self.entries = entries
        self.prefix = prefix
        self.size = path.stat().st_size
        self._offsets: dict[str, tuple[int, int]] = {}
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize | None = None
        self._readers = 0  # reads in progress with the descriptor
        self._close_later = False

    def fd(self) -> int:
        with self._lock:
            return self._open()

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._finalizer = weakref.finalize(self, os.close, self._fd)
        return self._fd

    def close(self) -> None:
        """Close the descriptor now, or once the reads using it (on reader threads) are done:
        a descriptor closed under a read could be reused by another file's open."""
        with self._lock:
            if self._readers:
                self._close_later = True
                return
            self._close()

    def _close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._fd = None
        self._close_later = False

    def storage_span(self, key: str) -> tuple[int, int]:
        """(byte offset of the data in the file, byte length) of storage `key`."""
        span = self._offsets.get(key)
        if span is not None:
            return span
        name = f"{self.prefix}data/{key}"
        info = self.entries.get(name)
        if info is None:
            raise CorruptCheckpointError(f"{self.path}: storage entry '{name}' is missing")
        if info.compress_type != zipfile.ZIP_STORED:
            raise UnsupportedFormatError(
                f"{self.path}: storage entry '{name}' is compressed; torch writes them stored — "
                "was the file re-zipped?"
            )
        start = member_data_start(self.fd(), info, base=0, source=self.path)
        if start + info.file_size > self.size:
            raise CorruptCheckpointError(f"{self.path}: truncated (storage '{key}' ends past EOF)")
        span = (start, info.file_size)
        self._offsets[key] = span
        return span

    def read_into(self, buf: memoryview, offset: int) -> None:
        """Fill `buf` from byte `offset` of the file with positional reads (thread-safe)."""
        with self._lock:
            fd = self._open()
            self._readers += 1
        try:
            self._pread_all(fd, buf, offset)
        finally:
            with self._lock:
                self._readers -= 1
                if self._close_later and not self._readers:
                    self._close()

    def _pread_all(self, fd: int, buf: memoryview, offset: int) -> None:
        done, total = 0, len(buf)
        while done < total:
            if hasattr(os, "preadv"):
                n = os.preadv(fd, [buf[done:]], offset + done)
            else:  # pragma: no cover - platforms without preadv
                chunk = os.pread(fd, min(total - done, 1 << 26), offset + done)
                n = len(chunk)
                buf[done : done + n] = chunk
            if n <= 0:
                raise CorruptCheckpointError(f"{self.path}: truncated (short read at {offset})")
            done += n


def member_data_start(fd: int, info: zipfile.ZipInfo, *, base: int, source: object) -> int:
    """Byte offset (in the file) of a stored zip member's data, from its local header at
    `base + info.header_offset`, after checking that header: its magic and its file name must be
    the central directory's (else an entry could point at another member's bytes, which Python's
    zipfile refuses too).

    Raises:
        CorruptCheckpointError: naming `source` and the member.
    """
    at = base + info.header_offset
    header = os.pread(fd, _LOCAL_HEADER.size, at)
    if len(header) < _LOCAL_HEADER.size:
        raise CorruptCheckpointError(f"{source}: truncated (zip header of '{info.filename}')")
    fields = _LOCAL_HEADER.unpack(header)
    if fields[0] != _LOCAL_MAGIC:
        raise CorruptCheckpointError(f"{source}: bad zip local header for '{info.filename}'")
    name_len, extra_len = fields[9], fields[10]
    expected = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
    if os.pread(fd, name_len, at + _LOCAL_HEADER.size) != expected:
        raise CorruptCheckpointError(
            f"{source}: zip member '{info.filename}': its local header names another file (the "
            "central directory points at another member's bytes)"
        )
    return at + _LOCAL_HEADER.size + name_len + extra_len


def read_member(zf: zipfile.ZipFile, name: str, *, limit: int, source: object) -> bytes:
    """The bytes of zip member `name`, inflating at most `limit` bytes (a deflate or bzip2 bomb
    of a few KB would inflate to GBs): stored or deflated members only, as torch writes them
    (stored) or a re-zipping tool might (deflate).

    Raises:
        UnsupportedFormatError: another compression method. CorruptCheckpointError: too large.
    """
    info = zf.getinfo(name)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise UnsupportedFormatError(
            f"{source}: zip member '{name}' is compressed with method {info.compress_type}; "
            "torch writes its members stored"
        )
    too_big = CorruptCheckpointError(
        f"{source}: zip member '{name}' inflates to more than {limit} bytes (the limits are in "
        "docs/security.md)"
    )
    if info.file_size > limit:
        raise too_big
    if info.CRC == 0 and info.file_size:
        # torch writes CRC 0 when saving with `compute_crc32=False` (torch.utils.serialization
        # .config.save, for speed): nothing to check, and zipfile would call it a bad CRC-32
        info = copy.copy(info)
        del info.CRC  # zipfile checks a member's CRC only when its ZipInfo has one
    try:
        with zf.open(info) as f:  # zipfile checks the local header's name against the directory
            data = f.read(limit + 1)
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        ValueError,
        NotImplementedError,  # zipfile: "zip file version 20.7"
    ) as e:
        raise CorruptCheckpointError(
            f"{source}: zip member '{name}' cannot be read ({type(e).__name__}: {str(e)[:120]})"
        ) from e
    if len(data) > limit:
        raise too_big
    return data


class LazyTensor:
    """A tensor stored in a torch zip file, read on demand.

    `read(start, stop)` returns elements [start, stop) of the tensor in flat row-major order as a
    1-D tensor of the stored dtype; only those bytes are read (non-contiguous tensors are gathered
    in bounded windows). Tied tensors share `storage.key`.
    """

    def __init__(
        self,
        archive: _Archive,
        storage: StorageRef,
        offset: int,
        shape: tuple[int, ...],
        stride: tuple[int, ...],
        dtype: str,
    ) -> None:
        self.archive = archive
        self.storage = storage
        self.storage_offset = offset
        self.shape = shape
        self.stride = stride
        self.dtype_name = dtype

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("a pickle may not set state on a tensor")

    @property
    def storage_key(self) -> str:
        return self.storage.key

    @cached_property
    def dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype_name)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @cached_property
    def itemsize(self) -> int:
        import torch

        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def is_contiguous(self) -> bool:
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride), strict=True):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    def __repr__(self) -> str:
        return f"LazyTensor(shape={self.shape}, dtype={self.dtype_name}, key={self.storage.key!r})"

    def _check_bounds(self) -> int:
        """Validates that every element lies inside the storage entry; returns its data offset."""
        start, nbytes = self.archive.storage_span(self.storage.key)
        if self.numel:
            spans = [(s - 1) * st for s, st in zip(self.shape, self.stride, strict=True)]
            last = self.storage_offset + sum(x for x in spans if x > 0)
            first = self.storage_offset + sum(x for x in spans if x < 0)
            if (last + 1) * self.itemsize > nbytes or first < 0:
                raise CorruptCheckpointError(
                    f"{self.archive.path}: storage '{self.storage.key}' is shorter than its tensor"
                )
        return start

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) in flat row-major order: a 1-D tensor of the stored dtype (its
        memory may come from `buffers`' pool: it is not shared with anything still in use)."""
        from adamscope.readers import buffers

        n = self.numel
        start, stop = max(0, start), min(stop, n)
        out = buffers.empty(max(0, stop - start), self.dtype)
        if stop <= start:
            return out
        base = self._check_bounds()
        if self.is_contiguous:
            offset = base + (self.storage_offset + start) * self.itemsize
            self.archive.read_into(_bytes_view(out), offset)
            return out
        return self._gather(start, stop, base, out)

    def read_into(self, start: int, stop: int, out: torch.Tensor) -> None:
        """Elements [start, stop) in flat order into the contiguous 1-D CPU tensor `out`."""
        if stop - start != out.numel() or start < 0 or stop > self.numel:
            raise CorruptCheckpointError(
                f"{self.archive.path}: elements [{start}, {stop}) of a {self.numel} element tensor"
            )
        if not self._contiguous or out.dtype != self.dtype:
            out.copy_(self.read(start, stop))
            return
        if stop > start:
            offset = self._data_start + (self.storage_offset + start) * self.itemsize
            self.archive.read_into(_bytes_view(out), offset)

    @cached_property
    def _contiguous(self) -> bool:
        return self.is_contiguous

    @cached_property
    def _data_start(self) -> int:
        """The storage's data offset in the file, once its bounds are checked (many small
        reads of one rank's flat state: the check runs once, not per read)."""
        return self._check_bounds()

    def _gather(self, start: int, stop: int, base: int, out: torch.Tensor) -> torch.Tensor:
        """Strided read: storage indices of the requested elements, read in bounded windows."""
        import numpy as np
        import torch

        flat = np.arange(start, stop, dtype=np.int64)
        index = np.full(flat.shape, self.storage_offset, dtype=np.int64)
        for size, stride in zip(reversed(self.shape), reversed(self.stride), strict=True):
            index += (flat % size) * stride
            flat //= size
        order = np.argsort(index, kind="stable")
        sorted_index = index[order]
        out_u8 = out.view(torch.uint8).numpy().reshape(-1, self.itemsize)
        i = 0
        while i < len(sorted_index):
            lo = int(sorted_index[i])
            j = int(np.searchsorted(sorted_index, lo + _GATHER_WINDOW, side="left"))
            hi = int(sorted_index[j - 1]) + 1
            window = np.empty((hi - lo, self.itemsize), dtype=np.uint8)
            self.archive.read_into(memoryview(window).cast("B"), base + lo * self.itemsize)
            out_u8[order[i:j]] = window[sorted_index[i:j] - lo]
            i = j
        return out

    def materialize(self) -> torch.Tensor:
        """The whole tensor in its shape (small tensors only: refuses above MATERIALIZE_LIMIT)."""
        if self.numel * self.itemsize > MATERIALIZE_LIMIT:
            raise AdamscopeError(
                f"{self.archive.path}: refusing to materialize a {self.numel * self.itemsize} byte "
                "tensor; stream it with read()"
            )
        return self.read(0, self.numel).reshape(self.shape)

    def item(self) -> float:
        """The value of a one-element tensor (e.g. a 0-d `step`)."""
        if self.numel != 1:
            raise ValueError(f"item() of a tensor with {self.numel} elements")
        return self.read(0, 1)[0].item()


class InMemoryTensor:
    """The LazyTensor interface over a real tensor (trust_pickle mode, or tensors built in code)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor.detach()
        self.shape = tuple(tensor.shape)
        self.dtype = tensor.dtype
        self.dtype_name = str(tensor.dtype).removeprefix("torch.")
        self.storage_key = str(tensor.untyped_storage().data_ptr())
        self.storage_offset = tensor.storage_offset()
        self.stride = tuple(tensor.stride())

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def read(self, start: int, stop: int) -> torch.Tensor:
        return self.tensor.reshape(-1)[start:stop].clone()

    def materialize(self) -> torch.Tensor:
        return self.tensor

    def item(self) -> float:
        return self.tensor.item()


def _bytes_view(t: torch.Tensor) -> memoryview:
    import torch

    return memoryview(t.view(torch.uint8).numpy()).cast("B")


class WindowFile(io.RawIOBase):
    """A read-only, seekable window [base, base+length) of an open file, for zipfile: one torch.save
    blob inside a DCP `.distcp`, or the zip that repair edits in place."""

    def __init__(self, f: Any, base: int, length: int) -> None:
        self.f, self.base, self.length, self.pos = f, base, length, 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = {0: pos, 1: self.pos + pos, 2: self.length + pos}[whence]
        return self.pos

    def read(self, n: int = -1) -> bytes:
        n = self.length - self.pos if n is None or n < 0 else min(n, self.length - self.pos)
        data = os.pread(self.f.fileno(), max(0, n), self.base + self.pos)
        self.pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def is_zip(path: Path) -> bool:
    """zipfile.is_zipfile, except that a damaged end record means False rather than an exception
    (is_zipfile lets BadZipFile out, e.g. for a fake multi-disk ZIP64 locator)."""
    try:
        return zipfile.is_zipfile(path)
    except Exception:  # noqa: BLE001 - any failure to find the end record: not a (whole) zip
        return False


def is_torch_zip(path: Path) -> bool:
    """True for a torch.save zip file (has a `data.pkl` entry); cheap."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("data.pkl") for n in zf.namelist())
    except Exception:  # noqa: BLE001 - zipfile raises many kinds on damaged files: "not a torch zip"
        return False


def is_legacy_torch(path: Path) -> bool:
    """True for the pre-1.6 torch.save format (a pickled magic number, pickles, storages)."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
        return head[:2] == b"\x80\x02" and _legacy_magic(head)
    except OSError:
        return False


# torch.save's legacy format starts with the magic number pickled at protocol 2: compared as bytes.
# Never pickle.loads() a file's head to check it: a 30-byte pickle can call os.system.
_LEGACY_HEAD = b"\x80\x02\x8a\x0a" + _LEGACY_MAGIC.to_bytes(10, "little") + b"."


def _legacy_magic(head: bytes) -> bool:
    return head.startswith(_LEGACY_HEAD)


def _open_archive(path: Path) -> tuple[_Archive, bytes]:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            pkl = [i.filename for i in infos if i.filename.endswith("data.pkl")]
            if not pkl:
                raise UnsupportedFormatError(
                    f"{path}: a zip file without data.pkl (not torch.save)"
                )
            name = min(pkl, key=len)
            data = read_member(zf, name, limit=guard.PICKLE_BYTES, source=path)
            entries = {i.filename: i for i in infos}
            prefix = name[: -len("data.pkl")]
            order = prefix + "byteorder"
            if order in entries and read_member(zf, order, limit=16, source=path) != b"little":
                raise UnsupportedFormatError(f"{path}: big-endian torch files are not supported")
    except AdamscopeError:
        raise
    except OSError as e:
        raise CorruptCheckpointError(f"{path}: cannot read ({e})") from None
    except Exception as e:  # noqa: BLE001 - BadZipFile, NotImplementedError, zlib.error, ...
        raise CorruptCheckpointError(
            f"{path}: not a readable zip file ({type(e).__name__}: {e})"
        ) from None
    return _Archive(path, entries, prefix), data


def load_lazy(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> Any:
    """Unpickle a torch.save zip file with LazyTensor leaves; nothing from the file is executed.

    Args:
        path: a file written by torch.save (zip format, torch >= 1.6).
        trust_pickle: DANGEROUS — fall back to torch.load(weights_only=False) (tensors mmapped,
            wrapped as InMemoryTensor) for files with globals outside the allowlist.

    Returns:
        The object tree (dicts, lists, ...) with a LazyTensor for every tensor.

    Raises:
        UnsafePickleError: the pickle names a global outside the allowlist.
        CorruptCheckpointError: truncated or inconsistent file.
        UnsupportedFormatError: not a torch zip file (the legacy format is refused).
    """
    path = Path(path)
    if trust_pickle:
        return _load_trusted(path)
    return _unpickle(path, stub_unknown=False)


def peek(path: str | os.PathLike[str]) -> Any:
    """The object tree of a torch zip file with every unknown global stubbed (for format probes)."""
    return _unpickle(Path(path), stub_unknown=True)


def peek_torch(path: Path) -> Any:
    """The structure of a torch zip file (unknown globals stubbed, no tensor data read), or None
    when `path` is not a torch zip file. Cached, so that several probes unpickle it once."""
    path = Path(path)
    if not path.is_file():
        return None
    st = path.stat()
    return _peek_cached(str(path.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _peek_cached(path: str, mtime_ns: int, size: int) -> Any:
    return peek(path) if is_torch_zip(Path(path)) else None


def _unpickle(path: Path, *, stub_unknown: bool) -> Any:
    _check_whole(path)
    if not is_zip(path):
        if is_legacy_torch(path):
            raise UnsupportedFormatError(
                f"{path}: legacy (pre-1.6, non-zip) torch.save format; adamscope reads only the "
                "zip format — re-save it with "
                "torch.save(torch.load(path, weights_only=True), new_path)"
            )
        raise UnsupportedFormatError(f"{path}: not a torch.save zip file")
    archive, data = _open_archive(path)

    def make_tensor(
        storage: StorageRef,
        offset: int,
        shape: tuple[int, ...],
        stride: tuple[int, ...],
        dtype: str,
    ) -> LazyTensor:
        return LazyTensor(archive, storage, offset, shape, stride, dtype)

    unpickler = RestrictedUnpickler(
        io.BytesIO(data), source=str(path), make_tensor=make_tensor, stub_unknown=stub_unknown
    )
    try:
        _check_memo(data, path)
        return unpickler.load()
    except AdamscopeError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to parse untrusted bytes means "corrupt"
        raise CorruptCheckpointError(
            f"{path}: cannot unpickle data.pkl ({type(e).__name__}: {e})"
        ) from None


def _check_memo(data: bytes, path: Path) -> None:
    """unpickler.check_pickle: memo indices, expansion through shared references, depth."""
    check_pickle(data, source=f"{path}: data.pkl")


def _check_whole(path: Path) -> None:
    """Raises CorruptCheckpointError for something that is not a regular file (a FIFO would block
    the open forever), an empty file or a zip file cut off before its end."""
    from adamscope.readers import guard

    size = guard.regular_file(path, what="torch.save file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CorruptCheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    if size == 0:
        raise CorruptCheckpointError(f"{path}: empty file (0 bytes): the save did not finish")
    if head == b"PK\x03\x04" and not is_zip(path):
        raise CorruptCheckpointError(
            f"{path}: truncated zip file ({size} bytes, no central directory at the end): the "
            "save did not finish or the copy was cut short"
        )


def _load_trusted(path: Path) -> Any:
    import torch

    msg = (
        f"trust_pickle: loading {path} with torch.load(weights_only=False) — this runs any code "
        "the file contains"
    )
    log.warning(msg)
    warnings.warn(msg, stacklevel=3)
    try:
        obj = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as e:
        raise CorruptCheckpointError(f"{path}: torch.load failed ({e})") from None
    return _wrap_tensors(obj)


def _wrap_tensors(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return InMemoryTensor(obj)
    if isinstance(obj, dict):
        return {k: _wrap_tensors(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(_wrap_tensors(v) for v in obj)
    return obj


def load_checked(path: Path, *, trust_pickle: bool, accept: Any, expected: str) -> Any:
    """`load_lazy(path)`, refused with UnsupportedFormatError unless `accept(tree)` holds.

    Used by the readers that first probed the file's structure with `peek` and now read it for real:
    what they probed must still be what they get.
    """
    from adamscope.errors import UnsupportedFormatError

    tree = load_lazy(Path(path), trust_pickle=trust_pickle)
    if not accept(tree):
        raise UnsupportedFormatError(f"{path}: no {expected}")
    return tree
