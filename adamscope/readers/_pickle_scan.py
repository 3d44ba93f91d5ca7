"""unpickler.check_pickle's scan compiled with numba: the same verdicts, ~70x faster (~95 MB/s).

The kernel runs the reference's stack machine on (objects, depth) cells over the raw bytes. What it
knows of the opcodes comes from `pickletools.opcodes` (`_pickle_ops.tables`): each opcode's
argument encoding (fixed bytes, a 1/4/8-byte length prefix, signed or not, one or two text lines)
and its stack_before pattern, in the order the reference pops it. What an argument decodes to
(str or bytes: a leaf counts its length; UTF-8 or ASCII) is found by calling pickletools' own
reader on sample bytes, not copied here.

Where the kernel cannot be sure to agree, it says so and check_pickle runs the reference:
protocol-0 text arguments (INT, FLOAT, STRING, PUT/GET by decimal index, a GLOBAL line with a
backslash escape) and a MARK popped as a value (the reference then counts it as -1 objects). An
argument the kernel finds malformed (truncated, a negative length, bad UTF-8) is read again by
pickletools' reader, so the refusal, or the silent stop, is the reference's with its message.
Leaf strings count characters exactly (UTF-8 is validated, so counting lead bytes is exact).
"""

from __future__ import annotations

import functools
import io
import logging
import pickletools

import numpy as np

from adamscope.errors import CorruptCheckpointError
from adamscope.readers._pickle_ops import (
    BAD_ARG,
    EXPANDS,
    MEMO_PAST,
    MEMO_UNWRITTEN,
    NESTS,
    OK,
    UNSURE,
    tables,
)
from adamscope.readers.guard import brief

log = logging.getLogger(__name__)


def refusal(source: object, why: str, pos: int) -> CorruptCheckpointError:
    """check_pickle's one line for a limit `why` broken by the opcode at byte `pos`."""
    return CorruptCheckpointError(f"{source}: {why} (at byte {pos}); refused before unpickling")


def truncation(source: object, e: ValueError) -> CorruptCheckpointError:
    """check_pickle's one line for pickletools' error on a length that runs past the data."""
    return CorruptCheckpointError(
        f"{source}: the pickle is truncated, or an opcode claims more bytes than it "
        f"holds ({brief(str(e), 100)}); refused before unpickling"
    )


@functools.cache
def available() -> bool:
    """True when numba imports and the kernel loads (compiled once, then cached on disk)."""
    try:
        scan(b"\x80\x04]\x94(K\x01h\x00e.", limit=100, max_depth=10)
    except Exception as e:  # noqa: BLE001 - any failure means: use the Python reference
        log.debug("pickle scan kernel unavailable (%s): using the Python reference", e)
        return False
    return True


def scan(data: bytes, *, limit: int, max_depth: int) -> tuple[int, int, int]:
    """(verdict, position, memo index) of the kernel on `data` (see the verdicts above)."""
    from adamscope.readers._pickle_scan_kernel import scan as kernel

    ops, before = tables()
    out = np.zeros(3, np.int64)
    kernel(np.frombuffer(data, np.uint8), ops, before, limit, max_depth, out)
    return int(out[0]), int(out[1]), int(out[2])


def bad_argument(data: bytes, pos: int) -> ValueError | None:
    """What pickletools says of the argument of the opcode at `pos` (None: it reads it fine)."""
    op = pickletools.code2op[chr(data[pos])]
    f = io.BytesIO(data)
    f.seek(pos + 1)
    try:
        op.arg.reader(f)
    except ValueError as e:
        return e
    return None


def check(data: bytes, *, source: object, limit: int, max_depth: int) -> bool:
    """The kernel's verdict on `data` as check_pickle gives it: raises its refusal, True when the
    pickle passes, False when the reference must decide (the kernel is unsure of an opcode, or it
    and pickletools disagree on an argument).

    Raises:
        CorruptCheckpointError: naming `source`, as unpickler.check_pickle_reference would.
    """
    verdict, pos, index = scan(data, limit=limit, max_depth=max_depth)
    if verdict == OK:
        return True
    if verdict == UNSURE:
        return False
    if verdict == BAD_ARG:
        e = bad_argument(data, pos)
        if e is None:
            return False
        if "but only" in str(e):  # the reference's test, on pickletools' own message
            raise truncation(source, e) from None
        return True  # the reference stops there; the unpickler says what is wrong
    why = {
        EXPANDS: f"expands to more than {limit} objects through shared references",
        NESTS: f"nests deeper than {max_depth} levels",
        MEMO_PAST: f"memo index {index} exceeds the pickle's size",
        MEMO_UNWRITTEN: f"memo index {index} read before it is written",
    }[verdict]
    raise refusal(source, why, pos)
