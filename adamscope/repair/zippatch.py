"""Byte-level edits of torch.save zip files: zero a span of a storage entry, overwrite a few bytes
(a step, an eps in `data.pkl`), then fix the CRC-32 of each entry touched — in the central
directory, the local header and the data descriptor torch writes after each entry.

Why in place rather than torch.load + torch.save: every byte not edited stays what it was (the
other tensors, pickled framework objects that the restricted unpickler only stubs, torch's 64-byte
alignment, the serialization id); the pickle that decides whether torch.load(weights_only=True)
accepts the file is the input's own; nothing from the file is ever re-pickled or run; and memory
stays bounded by a copy buffer whatever the file size. A "zip" here is a window of a file: a whole
torch.save file, or one torch.save blob inside a DCP `.distcp` file.
"""

from __future__ import annotations

import io
import os
import pickletools
import struct
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adamscope.errors import AdamscopeError, CorruptCheckpointError, UnsupportedFormatError
from adamscope.readers.torchzip import WindowFile

_LOCAL = struct.Struct("<IHHHHHIIIHH")  # local file header, 30 bytes
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # central directory header, 46 bytes
_CENTRAL_MAGIC = 0x02014B50
_DESCRIPTOR_MAGIC = b"PK\x07\x08"
_BUFFER = 16 << 20  # bytes per read/write when zeroing or checksumming


@dataclass(frozen=True)
class Window:
    """A zip archive inside `file`: bytes [base, base + length)."""

    file: Path
    base: int
    length: int


@dataclass(frozen=True)
class Edit:
    """Bytes [offset, offset + nbytes) of `window.file` (absolute offsets) become `data`, or
    zeros when `data` is None."""

    window: Window
    offset: int
    nbytes: int
    data: bytes | None = None


@dataclass(frozen=True)
class Entry:
    """Where one zip entry's data and CRC fields are (absolute offsets in the file)."""

    name: str
    data_start: int
    size: int
    stored: bool
    crc_fields: tuple[int, ...]  # central directory, local header (if set), data descriptor


def entries(window: Window) -> dict[str, Entry]:
    """The entries of the zip in `window`, with the absolute offsets of their data and CRCs.

    Raises:
        CorruptCheckpointError: not a readable zip, or headers that point outside the window.
    """
    try:
        with (
            open(window.file, "rb") as f,
            zipfile.ZipFile(WindowFile(f, window.base, window.length)) as zf,
        ):
            infos = zf.infolist()
            central = os.pread(f.fileno(), window.length - zf.start_dir, window.base + zf.start_dir)
            cd_at = _central_offsets(central, window.base + zf.start_dir)
            out = {}
            for info in infos:
                out[info.filename] = _entry(f.fileno(), info, window, cd_at, source=window.file)
            return out
    except AdamscopeError:
        raise
    except (OSError, zipfile.BadZipFile, ValueError, KeyError, struct.error) as e:
        raise CorruptCheckpointError(
            f"{window.file}: not a readable zip at byte {window.base} ({type(e).__name__}: {e})"
        ) from None


def _central_offsets(central: bytes, start: int) -> dict[str, int]:
    """name -> absolute offset of its central directory record."""
    out, pos = {}, 0
    while pos + _CENTRAL.size <= len(central):
        fields = _CENTRAL.unpack_from(central, pos)
        if fields[0] != _CENTRAL_MAGIC:
            break
        n_name, n_extra, n_comment = fields[10], fields[11], fields[12]
        raw = central[pos + _CENTRAL.size : pos + _CENTRAL.size + n_name]
        name = raw.decode("utf-8" if fields[3] & 0x800 else "cp437")
        out[name] = start + pos
        pos += _CENTRAL.size + n_name + n_extra + n_comment
    return out


def _entry(fd: int, info: zipfile.ZipInfo, window: Window, cd_at: dict, *, source: Path) -> Entry:
    local_at = window.base + info.header_offset
    fields = _LOCAL.unpack(os.pread(fd, _LOCAL.size, local_at))
    data_start = local_at + _LOCAL.size + fields[9] + fields[10]
    end = data_start + info.compress_size
    if info.filename not in cd_at or end > window.base + window.length:
        raise CorruptCheckpointError(f"{source}: zip entry '{info.filename}' lies outside its zip")
    crcs = [cd_at[info.filename] + 16]
    if fields[6]:  # a CRC in the local header too (torch leaves it 0 and writes a descriptor)
        crcs.append(local_at + 14)
    if info.flag_bits & 0x8:
        crcs.append(end + 4 if os.pread(fd, 4, end) == _DESCRIPTOR_MAGIC else end)
    return Entry(info.filename, data_start, info.file_size, info.compress_type == 0, tuple(crcs))


def apply(copy: Path, edits: Sequence[Edit]) -> int:
    """Apply `edits` (offsets as in the input file) to `copy`, a byte-for-byte copy of it, and
    fix the CRC-32 of every entry they touch. Returns the number of bytes written.

    Raises:
        AdamscopeError: an edit that is not inside one stored (uncompressed) entry.
    """
    by_window: dict[Window, list[Edit]] = {}
    for e in edits:
        by_window.setdefault(e.window, []).append(e)
    written = 0
    fd = os.open(copy, os.O_RDWR)
    try:
        for window, group in by_window.items():
            found = entries(Window(copy, window.base, window.length))
            touched: dict[str, Entry] = {}
            for e in group:
                entry = _containing(found.values(), e, source=window.file)
                touched[entry.name] = entry
                written += _write(fd, e)
            for entry in touched.values():
                crc = struct.pack("<I", _crc(fd, entry))
                for at in entry.crc_fields:
                    os.pwrite(fd, crc, at)
        os.fsync(fd)
    finally:
        os.close(fd)
    return written


def _containing(found: Iterable[Entry], e: Edit, *, source: Path) -> Entry:
    for entry in found:
        if entry.data_start <= e.offset and e.offset + e.nbytes <= entry.data_start + entry.size:
            if not entry.stored:
                raise UnsupportedFormatError(
                    f"{source}: zip entry '{entry.name}' is compressed; torch writes them stored"
                )
            return entry
    raise CorruptCheckpointError(
        f"{source}: bytes [{e.offset}, {e.offset + e.nbytes}) lie in no zip entry"
    )


def _write(fd: int, e: Edit) -> int:
    if e.data is not None:
        assert len(e.data) == e.nbytes, "an edit's data has its length"
        os.pwrite(fd, e.data, e.offset)
        return e.nbytes
    zeros = bytes(min(_BUFFER, e.nbytes))
    done = 0
    while done < e.nbytes:
        n = min(len(zeros), e.nbytes - done)
        os.pwrite(fd, zeros[:n] if n < len(zeros) else zeros, e.offset + done)
        done += n
    return done


def _crc(fd: int, entry: Entry) -> int:
    crc, done = 0, 0
    while done < entry.size:
        chunk = os.pread(fd, min(_BUFFER, entry.size - done), entry.data_start + done)
        if not chunk:
            raise CorruptCheckpointError(f"zip entry '{entry.name}' is cut short")
        crc = zlib.crc32(chunk, crc)
        done += len(chunk)
    return crc


# --- floats in data.pkl -------------------------------------------------------------------------

Path_ = tuple[Any, ...]  # keys and indices from the unpickled root to a value


def _sentinel(k: int) -> float:
    # a negative subnormal-free tiny number no optimizer stores, distinct for each k (exact)
    return -(2.0**-1000) * (1.0 + k * 2.0**-32)


def locate_floats(window: Window, paths: Sequence[Path_]) -> dict[Path_, tuple[int, float]]:
    """Where the floats at `paths` of the pickled tree in `window` are: path -> (absolute offset
    of the 8 big-endian bytes of its BINFLOAT opcode, value).

    Each BINFLOAT of data.pkl is replaced by a distinct sentinel and the pickle unpickled once
    more by adamscope's restricted unpickler (no tensor data read, nothing run): the sentinel
    found at a path names its opcode. (pickle never memoizes floats, so each is its own opcode.)

    Raises:
        UnsupportedFormatError: a value at `paths` is not a float written as BINFLOAT.
    """
    from adamscope.readers.torchzip import _check_memo
    from adamscope.readers.unpickler import RestrictedUnpickler

    found = entries(window)
    pkl = min((n for n in found if n.endswith("data.pkl")), key=len, default=None)
    if pkl is None or not found[pkl].stored:
        raise UnsupportedFormatError(f"{window.file}: no stored data.pkl in the zip")
    entry = found[pkl]
    with open(window.file, "rb") as f:
        data = os.pread(f.fileno(), entry.size, entry.data_start)
    _check_memo(data, window.file)
    at = [pos + 1 for op, _arg, pos in pickletools.genops(data) if op.name == "BINFLOAT"]
    marked = bytearray(data)
    for k, p in enumerate(at):
        marked[p : p + 8] = struct.pack(">d", _sentinel(k))
    tree = RestrictedUnpickler(
        io.BytesIO(bytes(marked)), source=str(window.file), make_tensor=lambda *a: object()
    ).load()
    index = {_sentinel(k): k for k in range(len(at))}
    out = {}
    for path in paths:
        value = _at(tree, path)
        k = index.get(value) if isinstance(value, float) else None
        if k is None:
            raise UnsupportedFormatError(
                f"{window.file}: {'/'.join(map(str, path))} is not a float stored as BINFLOAT"
            )
        p = at[k]
        out[path] = (entry.data_start + p, struct.unpack(">d", data[p : p + 8])[0])
    return out


def _at(tree: Any, path: Path_) -> Any:
    for key in path:
        try:
            tree = tree[key]
        except (KeyError, IndexError, TypeError):
            return None
    return tree


def float_edit(window: Window, offset: int, value: float) -> Edit:
    """The edit that writes `value` into the BINFLOAT whose 8 bytes start at `offset`."""
    return Edit(window, offset, 8, struct.pack(">d", value))
