"""unpickler.check_pickle's scan compiled with numba: the same verdicts, ~100x faster.

The kernel runs the reference's stack machine on (objects, depth) cells over the raw bytes. What it
knows of the opcodes comes from `pickletools.opcodes` at import time (`_tables`): each opcode's
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
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# opcode kinds (the reference's special cases, by name; everything else is GENERIC or IN_PLACE)
UNKNOWN, GENERIC, IN_PLACE, PUT, MEMOIZE, GET, MARK, POP, POP_MARK, DUP, NOOP, STOP = range(12)
# argument kinds: none, n fixed bytes, a length prefix of n bytes then data, n text lines, unsure
A_NONE, A_FIXED, A_COUNTED, A_LINES, A_UNSURE = range(5)
# flag bits per opcode
F_SIGNED, F_COUNTS, F_UTF8, F_SURROGATES, F_ASCII = 1, 2, 4, 8, 16
# stack_before items, stored reversed (the order the reference pops them)
S_END, S_ONE, S_SLICE, S_MARKOBJ = range(4)
# the kernel's verdicts (out[0]); out[1] = position, out[2] = the memo index
OK, EXPANDS, NESTS, MEMO_PAST, MEMO_UNWRITTEN, BAD_ARG, UNSURE = range(7)

_KINDS = {
    "PUT": PUT,
    "BINPUT": PUT,
    "LONG_BINPUT": PUT,
    "MEMOIZE": MEMOIZE,
    "GET": GET,
    "BINGET": GET,
    "LONG_BINGET": GET,
    "MARK": MARK,
    "POP": POP,
    "STOP": STOP,
    "POP_MARK": POP_MARK,
    "DUP": DUP,
    "PROTO": NOOP,
    "FRAME": NOOP,
    "NEXT_BUFFER": NOOP,
    "READONLY_BUFFER": NOOP,
}
_IN_PLACE = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})
_PREFIX = {  # length-prefix encodings of pickletools' counted arguments: (bytes, signed)
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}


def _reads(reader: Any, raw: bytes) -> tuple[bool, Any, int]:
    """(ok, value, bytes consumed) of pickletools' `reader` on `raw`."""
    f = io.BytesIO(raw)
    try:
        return True, reader(f), f.tell()
    except ValueError:
        return False, None, f.tell()


def _counted_flags(reader: Any, width: int) -> int:
    def sample(payload: bytes) -> bytes:
        return len(payload).to_bytes(width, "little") + payload

    ok, value, _ = _reads(reader, sample(b"a"))
    assert ok, reader
    flags = F_COUNTS if isinstance(value, str | bytes) else 0
    if not _reads(reader, sample(b"\xff"))[0]:  # decoded as UTF-8
        flags |= F_UTF8 | (F_SURROGATES if _reads(reader, sample(b"\xed\xa0\x80"))[0] else 0)
    return flags


def _line_arg(reader: Any) -> tuple[int, int, int]:
    """(kind, lines, flags) of a newline-terminated argument: A_LINES when pickletools returns
    the lines as they are (joined by a space), so that only their length matters; else A_UNSURE."""
    for lines in (1, 2):
        raw = b"ab\n" + b"cd\n" * (lines - 1)
        ok, value, used = _reads(reader, raw + b"ef\n")
        if ok and used == len(raw) and value == " ".join(["ab", "cd"][:lines]):
            break
    else:
        return A_UNSURE, 0, 0
    flags = F_COUNTS
    ok, value, _ = _reads(reader, b"\x80\n" * lines)
    if not ok:
        flags |= F_ASCII  # a byte >= 0x80 is an error
    elif value != " ".join(["\x80"] * lines):
        return A_UNSURE, 0, 0
    return A_LINES, lines, flags


@functools.cache
def _tables() -> tuple[np.ndarray, ...]:
    """Per opcode byte: kind, argument kind, its n, flags, reversed stack_before pattern."""
    kind = np.zeros(256, np.int8)
    argk = np.zeros(256, np.int8)
    argn = np.zeros(256, np.int8)
    flags = np.zeros(256, np.int8)
    before = np.zeros((256, 4), np.int8)
    after = np.zeros(256, np.bool_)  # builds something (the reference returns after popping)
    for op in pickletools.opcodes:
        c = ord(op.code)
        kind[c] = _KINDS.get(op.name, IN_PLACE if op.name in _IN_PLACE else GENERIC)
        arg = op.arg
        if arg is None:
            argk[c] = A_NONE
        elif arg.n > 0:
            argk[c], argn[c] = A_FIXED, arg.n
            ok, value, _ = _reads(arg.reader, b"\xff" * arg.n)  # memo indices: unsigned
            if kind[c] in (PUT, GET):
                assert ok and value == (1 << 8 * arg.n) - 1, op.name
        elif arg.n in _PREFIX:
            width, signed = _PREFIX[arg.n]
            argk[c], argn[c] = A_COUNTED, width
            flags[c] = (F_SIGNED if signed else 0) | _counted_flags(arg.reader, width)
        elif arg.n == pickletools.UP_TO_NEWLINE and kind[c] not in (PUT, GET):
            argk[c], argn[c], flags[c] = _line_arg(arg.reader)
        else:
            argk[c] = A_UNSURE
        if kind[c] in (GENERIC, IN_PLACE) and len(op.stack_after) > 1:
            argk[c] = A_UNSURE  # not a pattern of the reference's (no such opcode today)
        pattern = [
            S_SLICE
            if s is pickletools.stackslice
            else S_MARKOBJ
            if s is pickletools.markobject
            else S_ONE
            for s in reversed(op.stack_before)
        ]
        assert len(pattern) < before.shape[1] and pattern.count(S_SLICE) <= 1, op.name
        before[c, : len(pattern)] = pattern
        after[c] = bool(op.stack_after)
    return kind, argk, argn, flags, before, after


@functools.cache
def _kernel_tables() -> tuple[np.ndarray, np.ndarray]:
    kind, argk, argn, flags, before, after = _tables()
    return np.stack([kind, argk, argn, flags, after.astype(np.int8)], axis=1), before


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

    ops, before = _kernel_tables()
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
    from adamscope.readers.unpickler import refusal, truncation

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
