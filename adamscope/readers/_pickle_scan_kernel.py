"""The numba kernel of `adamscope.readers._pickle_scan` (imported only when numba is).

Cells: the reference's [objects, depth] lists. A value on the stack is inline (its own objects and
depth, as a fresh list nobody else holds) until PUT, MEMOIZE or DUP shares it: then it moves to a
cell that the stack slot and the memo both name, and an in-place op (APPEND ...) grows that cell,
as the reference grows the shared list. Cell 0 is the MARK. Counts stop at limit + 1: every count
is positive (a MARK popped as a value goes back to the reference), so a count past the limit stays
past it and the verdict is the same.
"""

# ruff: noqa: ANN001, ANN202, PLR0913, PLR0912, PLR0915, C901

from __future__ import annotations

import functools

import numba as nb
import numpy as np
from numba import types
from numba.typed import Dict

from adamscope.readers._pickle_ops import (
    A_COUNTED,
    A_FIXED,
    A_LINES,
    A_UNSURE,
    BAD_ARG,
    DUP,
    EXPANDS,
    F_ASCII,
    F_COUNTS,
    F_SIGNED,
    F_SURROGATES,
    F_UTF8,
    GET,
    IN_PLACE,
    MARK,
    MEMO_PAST,
    MEMO_UNWRITTEN,
    MEMOIZE,
    NESTS,
    NOOP,
    OK,
    POP,
    POP_MARK,
    PUT,
    S_END,
    S_ONE,
    S_SLICE,
    STOP,
    UNKNOWN,
    UNSURE,
)

jit = functools.partial(nb.njit, cache=True, nogil=True)


@jit
def _grow(a):
    b = np.empty((a.shape[0], 2 * a.shape[1]), a.dtype)
    b[:, : a.shape[1]] = a
    return b


@jit
def _grow_memo(a):
    b = np.full(2 * a.size, -1, np.int64)
    b[: a.size] = a
    return b


@nb.njit(inline="always")
def _last_mark(stack, top):
    j = top - 1
    while j >= 0 and stack[0, j] != 0:
        j -= 1
    return j


@nb.njit(inline="always")
def _uint(d, i, n):
    v = 0
    for j in range(n):
        v |= np.int64(d[i + j]) << (8 * j)
    return v


@jit
def utf8_chars(d, i, end, surrogates):
    """Characters of d[i:end] as UTF-8 (encoded surrogates allowed if `surrogates`), -1 if not."""
    n = 0
    while i < end:
        b = d[i]
        if b < 0x80:
            i += 1
            n += 1
            continue
        lo, hi = 0x80, 0xBF
        if 0xC2 <= b <= 0xDF:
            k = 1
        elif 0xE0 <= b <= 0xEF:
            k = 2
            if b == 0xE0:
                lo = 0xA0
            elif b == 0xED and not surrogates:
                hi = 0x9F
        elif 0xF0 <= b <= 0xF4:
            k = 3
            if b == 0xF0:
                lo = 0x90
            elif b == 0xF4:
                hi = 0x8F
        else:
            return -1
        if i + k >= end:
            return -1
        if d[i + 1] < lo or d[i + 1] > hi:
            return -1
        for j in range(2, k + 1):
            if d[i + j] < 0x80 or d[i + j] > 0xBF:
                return -1
        i += k + 1
        n += 1
    return n


@nb.njit(inline="always")
def _argument(d, q, a, n, fl):
    """(end, value, chars, verdict) of the argument at d[q:]: verdict OK, BAD_ARG or UNSURE."""
    size = d.size
    if a == A_FIXED:
        if q + n > size:
            return q, 0, 0, BAD_ARG
        return q + n, _uint(d, q, min(n, 4)), 0, OK
    if a == A_COUNTED:
        if q + n > size:
            return q, 0, 0, BAD_ARG
        if n == 8 and d[q + 7] >= 0x80:  # past sys.maxsize
            return q, 0, 0, BAD_ARG
        length = _uint(d, q, n)
        if fl & F_SIGNED and n == 4 and length >= 1 << 31:  # negative
            return q, 0, 0, BAD_ARG
        q += n
        if length > size - q:
            return q, 0, 0, BAD_ARG
        chars = length
        if fl & F_UTF8:
            chars = utf8_chars(d, q, q + length, (fl & F_SURROGATES) != 0)
            if chars < 0:
                return q, 0, 0, BAD_ARG
        return q + length, 0, chars, OK
    if a == A_LINES:
        chars = n - 1  # the space joining two lines
        for _ in range(n):
            j = q
            while j < size and d[j] != 10:
                if d[j] == 92:  # a backslash escape: what it decodes to is pickletools' call
                    return q, 0, 0, UNSURE
                if d[j] >= 0x80 and fl & F_ASCII:
                    return q, 0, 0, BAD_ARG
                j += 1
            if j >= size:
                return q, 0, 0, BAD_ARG
            chars += j - q
            q = j + 1
        return q, 0, chars, OK
    if a == A_UNSURE:
        return q, 0, 0, UNSURE
    return q, 0, 0, OK


@jit
def scan(d, ops, before, limit, max_depth, out):
    """Runs `_run` until it is done, growing its arrays when it asks (arrays reassigned in the
    hot loop cost reference counting on every opcode: 3x the time)."""
    # the stack: [0] -1 inline, else the cell it names (0: MARK); [1] inline objects, [2] depth
    stack = np.empty((3, 1024), np.int64)
    cells = np.empty((2, 1024), np.int64)  # objects, depth
    cells[0, 0], cells[1, 0] = -1, -1
    # the memo: a table for indices below `dense` (grown as they come), a dict above (a pickle of
    # n bytes has at most n / 2 memoized objects; one that names far indices costs a dict lookup)
    table = np.full(1024, -1, np.int64)
    memo = Dict.empty(key_type=types.int64, value_type=types.int64)
    st = np.zeros(6, np.int64)  # pos, top, cells, simulating, in the table, the index to hold
    st[2], st[3] = 1, 1
    out[0], out[1], out[2] = OK, 0, 0
    while True:
        need = _run(d, ops, before, limit, max_depth, out, stack, cells, table, memo, st)
        if need == 0:
            return
        if need == 1:
            stack = _grow(stack)
        elif need == 2:
            cells = _grow(cells)
        else:
            while st[5] >= table.size:
                table = _grow_memo(table)


@jit
def _run(d, ops, before, limit, max_depth, out, stack, cells, table, memo, st):
    """Scans from st's position; 0 when done (the verdict in `out`), else what must grow: 1 the
    stack, 2 the cells, 3 the memo table (to hold index st[5]); st holds where it stopped. `ops`
    per opcode byte: kind, argument kind, its n, flags, whether it builds something."""
    size = d.size
    dense = size // 8 + 1024
    pos, top, ncell, simulating, in_table = st[0], st[1], st[2], st[3] != 0, st[4]
    while pos < size:
        if top + 1 >= stack.shape[1] or ncell + 1 >= cells.shape[1]:
            st[0], st[1], st[2], st[3], st[4] = pos, top, ncell, simulating, in_table
            return 1 if top + 1 >= stack.shape[1] else 2
        code = d[pos]
        k = ops[code, 0]
        if k == UNKNOWN:
            return 0  # pickletools stops with a ValueError: the unpickler says what is wrong
        fl = ops[code, 3]
        q, value, chars, verdict = _argument(d, pos + 1, ops[code, 1], ops[code, 2], fl)
        if verdict != OK:
            out[0], out[1] = verdict, pos
            return 0
        if k == PUT and value > size:
            out[0], out[1], out[2] = MEMO_PAST, pos, value
            return 0
        if not simulating:
            pass
        elif k == PUT or k == MEMOIZE or k == DUP:
            key = value if k == PUT else in_table + len(memo)
            if k != DUP and key < dense and key >= table.size and top > 0:
                st[0], st[1], st[2], st[3], st[4], st[5] = (
                    pos,
                    top,
                    ncell,
                    simulating,
                    in_table,
                    key,
                )
                return 3
            if top == 0:
                simulating = False
            else:
                if stack[0, top - 1] < 0:  # share it: the memo (or the copy) sees later growth
                    cells[0, ncell], cells[1, ncell] = stack[1, top - 1], stack[2, top - 1]
                    stack[0, top - 1] = ncell
                    ncell += 1
                if k == DUP:
                    stack[0, top] = stack[0, top - 1]
                    top += 1
                else:
                    if key < dense:
                        in_table += table[key] < 0
                        table[key] = stack[0, top - 1]
                    else:
                        memo[key] = stack[0, top - 1]
        elif k == GET:
            if value < dense:
                c = table[value] if value < table.size else -1
            else:
                c = memo.get(value, -1)
            if c < 0:
                out[0], out[1], out[2] = MEMO_UNWRITTEN, pos, value
                return 0
            stack[0, top] = c
            top += 1
        elif k == MARK:
            stack[0, top] = 0
            top += 1
        elif k == POP or k == STOP:
            if top == 0:
                simulating = False
            else:
                top -= 1
        elif k == POP_MARK:
            j = _last_mark(stack, top)
            if j < 0:
                simulating = False
            else:
                top = j
        elif k != NOOP:
            # where the reference's pops end (p), and the MARK a stackslice pops to (m)
            p, m = top, -1
            for t in range(before.shape[1]):
                s = before[code, t]
                if s == S_END:
                    break
                if s == S_ONE:
                    if p == 0:
                        simulating = False
                        break
                    p -= 1
                    # a MARK popped as a value: the reference counts it as -1 objects
                    if stack[0, p] == 0:
                        out[0], out[1] = UNSURE, pos
                        return 0
                elif s == S_SLICE:
                    j = _last_mark(stack, p)
                    if j < 0:
                        simulating = False
                        break
                    p = m = j
            if not simulating:
                pass
            elif ops[code, 4] == 0:
                top = p
            elif k == IN_PLACE:  # the container (at p, popped last) grows by the others
                c = stack[0, p]
                obj = cells[0, c] if c >= 0 else stack[1, p]
                dep = cells[1, c] if c >= 0 else stack[2, p]
                pp = top
                for t in range(before.shape[1]):
                    s = before[code, t]
                    if s == S_END:
                        break
                    lo, hi = 0, 0
                    if s == S_ONE:
                        pp -= 1
                        lo, hi = pp, pp + 1
                        if pp == p:
                            break
                    elif s == S_SLICE:
                        lo, hi, pp = m + 1, pp, m
                    for i in range(lo, hi):
                        e = stack[0, i]
                        if e == c and c >= 0:  # the container itself: its count so far
                            iobj, idep = obj, dep
                        else:
                            iobj = cells[0, e] if e >= 0 else stack[1, i]
                            idep = cells[1, e] if e >= 0 else stack[2, i]
                        obj = min(obj + iobj, limit + 1)
                        dep = max(dep, idep + 1)
                if c >= 0:
                    cells[0, c], cells[1, c] = obj, dep
                else:
                    stack[1, p], stack[2, p] = obj, dep
                top = p + 1
            else:
                obj, dep = 1, 0
                for i in range(p, top):
                    if i != m:
                        e = stack[0, i]
                        obj = min(obj + (cells[0, e] if e >= 0 else stack[1, i]), limit + 1)
                        dep = max(dep, cells[1, e] if e >= 0 else stack[2, i])
                if top - p - (m >= 0) == 0:  # a leaf: a long string counts by its length
                    obj = 1 + (chars >> 4 if fl & F_COUNTS else 0)
                stack[0, p], stack[1, p], stack[2, p] = -1, obj, dep + 1
                top = p + 1
            if simulating and ops[code, 4] != 0:
                obj = cells[0, stack[0, top - 1]] if stack[0, top - 1] >= 0 else stack[1, top - 1]
                dep = cells[1, stack[0, top - 1]] if stack[0, top - 1] >= 0 else stack[2, top - 1]
                if obj > limit:
                    out[0], out[1] = EXPANDS, pos
                    return 0
                if dep > max_depth:
                    out[0], out[1] = NESTS, pos
                    return 0
        if k == STOP:
            return 0
        pos = q
    return 0
