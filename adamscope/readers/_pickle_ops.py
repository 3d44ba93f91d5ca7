"""What the pickle scan kernel knows of the opcodes, from `pickletools.opcodes` at import time.

Per opcode byte (`tables`): its kind (the reference's special cases, by name), its argument's
encoding (fixed bytes, a 1/4/8-byte length prefix, signed or not, one or two text lines), what the
argument decodes to (found by calling pickletools' own reader on sample bytes: a str or bytes leaf
counts its length; UTF-8, with or without encoded surrogates, or ASCII) and its stack_before
pattern, reversed: the order the reference pops it.
"""

from __future__ import annotations

import functools
import io
import pickletools
from typing import Any

import numpy as np

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
def tables() -> tuple[np.ndarray, np.ndarray]:
    """(ops, before): per opcode byte, ops[c] = kind, argument kind, its n, flags, whether it
    builds something; before[c] = its stack_before pattern, reversed."""
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
            ok, value, _ = _reads(arg.reader, b"\xff" * arg.n)
            if not (ok and _reads(arg.reader, b"\x00" * arg.n)[0]):
                argk[c] = A_UNSURE  # a reader that checks its bytes (none today)
            if kind[c] in (PUT, GET):  # memo indices: unsigned
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
        # the kernel grows the container in place: the item the reference pops last
        assert kind[c] != IN_PLACE or pattern[-1:] == [S_ONE], op.name
        after[c] = bool(op.stack_after)
    return np.stack([kind, argk, argn, flags, after.astype(np.int8)], axis=1), before
