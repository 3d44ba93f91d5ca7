"""What every reader checks before it opens a file a checkpoint names: that it is a regular file
(a FIFO blocks the open forever, a device never ends), that its size is one the format allows, and
that metadata (JSON, pointer files) is read with a byte cap. The readers and the log ingestion all
go through these functions; the limits, and why real checkpoints of 500B-parameter models stay far
inside them, are in docs/security.md.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from adamscope.errors import CorruptCheckpointError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# A DeepSpeed `latest` file holds one tag (a folder name such as `global_step1000`).
POINTER_BYTES = 4 * KiB
# JSON metadata: trainer_state.json (log_history grows ~200 bytes per logged step), config.json,
# model.safetensors.index.json (~100 bytes per tensor name).
JSON_BYTES = 512 * MiB
# A training log read whole (CSV); JSONL is streamed line by line under LINE_BYTES per line.
LOG_BYTES = 4 * GiB
LINE_BYTES = 16 * MiB
# A pickle read into memory: a torch zip file's data.pkl (inflated), a DCP blob's data.pkl.
PICKLE_BYTES = 256 * MiB
# A DCP `.metadata`: an FSDP2 checkpoint of a 546B-parameter model at 1,024 ranks has ~0.74 GB
# (docs/scale.md). The numba scan checks it in ~8 s (unpickler.check_pickle, ~95 MB/s; without
# numba a pickle above PICKLE_BYTES is still refused), but unpickling it costs ~12 bytes of memory
# per byte (measured on 55 MB): 1 GiB of metadata is ~13 GB per process, so not more.
DCP_METADATA_BYTES = 1 * GiB
# The safetensors format's own header limit (the safetensors library refuses larger headers).
SAFETENSORS_HEADER_BYTES = 100_000_000

_KINDS = (
    (stat.S_ISDIR, "folder"),
    (stat.S_ISFIFO, "FIFO (named pipe)"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def regular_file(path: Path, *, limit: int | None = None, what: str = "file") -> int:
    """The size of `path` (symlinks followed) after checking that it is a regular file of at
    most `limit` bytes.

    Raises:
        CorruptCheckpointError: missing, not a regular file, or larger than `limit`.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise CorruptCheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    _check_stat(path, st, limit=limit, what=what)
    return st.st_size


def _check_stat(path: Path, st: os.stat_result, *, limit: int | None, what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((k for test, k in _KINDS if test(st.st_mode)), "special file")
        raise CorruptCheckpointError(
            f"{path}: is a {kind}, not a regular file (a {what} must be a file)"
        )
    if limit is not None and st.st_size > limit:
        raise CorruptCheckpointError(
            f"{path}: {st.st_size} bytes, more than a {what} may hold ({limit} bytes; the limits "
            "are in docs/security.md)"
        )


def bounded_read(path: Path, *, limit: int, what: str = "file") -> bytes:
    """The bytes of regular file `path`, refused above `limit` bytes (checked before reading, and
    again while reading, so a file that grows or lies about its size is still cut off).

    Raises:
        CorruptCheckpointError: see `regular_file`; or the read fails.
    """
    regular_file(path, limit=limit, what=what)
    try:
        # O_NONBLOCK: a FIFO swapped in after the check must not block the open
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise CorruptCheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        _check_stat(path, os.fstat(fd), limit=limit, what=what)
        parts, total = [], 0
        while total <= limit:
            block = os.read(fd, min(limit + 1 - total, 16 * MiB))
            if not block:
                break
            parts.append(block)
            total += len(block)
    except OSError as e:
        raise CorruptCheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if total > limit:
        raise CorruptCheckpointError(f"{path}: more than {limit} bytes (a {what} holds less)")
    return b"".join(parts)


def read_json(path: Path, *, limit: int = JSON_BYTES, what: str = "JSON file") -> Any:
    """The parsed JSON of `path`, read with `bounded_read`.

    Raises:
        CorruptCheckpointError: see `bounded_read`; invalid JSON, or nested too deeply to parse.
    """
    return parse_json(bounded_read(path, limit=limit, what=what), source=path)


def parse_json(data: bytes | str, *, source: Path | str) -> Any:
    """json.loads with every failure (bad syntax, bad UTF-8, nesting too deep for the parser,
    an integer of too many digits) as one CorruptCheckpointError naming `source`."""
    try:
        return json.loads(data)
    except json.JSONDecodeError as e:
        raise CorruptCheckpointError(
            f"{source}: not valid JSON ({e.msg} at line {e.lineno})"
        ) from None
    except RecursionError:
        raise CorruptCheckpointError(f"{source}: JSON nested too deeply to parse") from None
    except (ValueError, UnicodeDecodeError) as e:  # bad UTF-8, int of more than 4300 digits
        detail = " ".join(str(e).split())[:120]
        raise CorruptCheckpointError(f"{source}: not valid JSON ({detail})") from None


def finite_int(value: Any, *, source: Path | str, what: str, lo: int = 0, hi: int = 1 << 62) -> int:
    """`value` (an int, an integral float or a one-element tensor) as an int in [lo, hi].

    Steps, offsets, sizes and ranks read from files go through here, so that 1e30, inf, NaN,
    strings, None and bools become one line naming the file rather than a traceback.

    Raises:
        CorruptCheckpointError: `value` is not such a number.
    """
    x = value
    if hasattr(x, "numel") and hasattr(x, "item"):
        n = x.numel() if callable(x.numel) else x.numel
        if n != 1:
            raise CorruptCheckpointError(f"{source}: {what} has {n} elements, expected one")
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise CorruptCheckpointError(f"{source}: {what} is {_short(value)}, not an integer")
    if isinstance(x, float):
        if not (x == x and abs(x) != float("inf")) or x != int(x):
            raise CorruptCheckpointError(f"{source}: {what} is {brief(x)}, not an integer")
        x = int(x)
    if not lo <= x <= hi:
        raise CorruptCheckpointError(f"{source}: {what} is {brief(x)}, outside [{lo}, {hi}]")
    return x


def brief(value: Any, limit: int = 80) -> str:
    """The repr of an untrusted value, cut to `limit` characters, built in bounded time: at most a
    few levels and items are visited (a pickle's shared references can make a tiny file's value
    expand past memory when walked whole, and `f"{x!r:.80}"` builds the whole repr first)."""
    import reprlib

    if isinstance(value, int) and value.bit_length() > 4096:  # str() refuses past 4,300 digits
        return f"an integer of {value.bit_length()} bits"
    r = reprlib.Repr()
    r.maxlevel, r.maxtuple, r.maxlist, r.maxdict, r.maxset = 3, 6, 6, 4, 4
    r.maxfrozenset, r.maxdeque, r.maxarray = 4, 4, 4
    r.maxstring, r.maxother, r.maxlong = limit, limit, 40
    try:
        text = r.repr(value)
    except Exception:  # noqa: BLE001 - a stub's or a hostile object's repr: describe its type
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: Any) -> str:
    """A bounded description of an untrusted value (never its full repr: it may be huge)."""
    if isinstance(value, str | bytes):
        return f"{type(value).__name__} {value[:40]!r}"
    return f"a {type(value).__name__}"
