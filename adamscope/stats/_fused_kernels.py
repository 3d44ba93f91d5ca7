"""numba kernels of `adamscope.stats.fused` (imported only when numba is; see that module).

Module-level functions so that numba caches their machine code on disk (closures are not cached).
"""

# ruff: noqa: ANN001, ANN202, PLR0913, N803

from __future__ import annotations

import functools

import numba as nb
import numpy as np

TILE = 4096  # elements per tile (measured: 1024 8.5, 2048 6.6-7.3, 4096 6.3-6.4, 8192 6.5 ns/elem)
SHIFT_POINTS = (
    1024  # points averaged for the shift of the moment sums (<= TILE: they use its buffers)
)
assert SHIFT_POINTS <= TILE


jit = functools.partial(nb.njit, cache=True, nogil=True, error_model="numpy")
f32 = np.float32
fmax = f32(np.finfo(np.float32).max)
# numba does not reliably inline small jitted helpers, and a helper called per element costs
# ~8 ns: helpers here take whole tiles and loop `for i in range(n)` from 0 (which vectorises).


@jit
def ur_tile(m, vd, u, r, n, c, paper, inside):
    # torch's order of operations in float32 (adam.update_and_ratio_raw); without bias
    # correction c[0] = c[1] = c[2] = 1, and dividing by 1 is exact.
    bc1, sbc2, bc2, eps, b1, b2 = c[0], c[1], c[2], c[3], c[4], c[5]
    if not paper:
        if inside:
            for i in range(n):
                mh = m[i] / bc1
                r[i] = mh / (np.sqrt(vd[i]) / sbc2)
                u[i] = mh / np.sqrt(vd[i] / bc2 + eps)
        elif bc1 == 1 and sbc2 == 1:  # past the warm-up (float32 1 - beta**t = 1): x / 1 = x
            for i in range(n):
                s = np.sqrt(vd[i])
                r[i] = m[i] / s
                u[i] = m[i] / (s + eps)
        else:
            for i in range(n):
                mh = m[i] / bc1
                s = np.sqrt(vd[i]) / sbc2
                r[i] = mh / s
                u[i] = mh / (s + eps)
    else:
        for i in range(n):
            mh = (m[i] / bc1) * b1
            d = (vd[i] / bc2) * b2
            q = np.sqrt(d)
            r[i] = mh / q
            u[i] = mh / (np.sqrt(d + eps) if inside else q + eps)
    for i in range(n):  # r = 0 where vd = 0; nan -> 0 and +-inf -> +-max (torch's nan_to_num)
        x = r[i]
        x = f32(0.0) if vd[i] == 0 or x != x else x
        r[i] = min(max(x, -fmax), fmax)


@jit(fastmath={"reassoc", "nsz", "contract"})
def sums_tile(m, v, vd, u, r, n, cu, cr, acc, thr, no_thr):
    vs = ms = 0.0
    su1 = su2 = su3 = su4 = sr1 = sr2 = sr3 = sr4 = 0.0
    below = zeros = 0
    for i in range(n):
        fm = np.float64(m[i])
        vs += np.float64(v[i])
        ms += fm * fm
        x = vd[i]
        below += (x < thr) | (no_thr & (x <= 0))
        zeros += x == 0
        d = np.float64(u[i]) - cu
        d2 = d * d
        su1 += d
        su2 += d2
        su3 += d2 * d
        su4 += d2 * d2
        d = np.float64(r[i]) - cr
        d2 = d * d
        sr1 += d
        sr2 += d2
        sr3 += d2 * d
        sr4 += d2 * d2
    acc[0] += vs
    acc[1] += ms
    acc[2] += below
    acc[3] += zeros
    acc[9] += su1
    acc[10] += su2
    acc[11] += su3
    acc[12] += su4
    acc[14] += sr1
    acc[15] += sr2
    acc[16] += sr3
    acc[17] += sr4


@jit
def lin_tile(x, n, h, scale, off, top, idx):
    for i in range(n):
        y = x[i] * scale + off
        y = min(max(y, f32(0.0)), top) if y == y else f32(0.0)
        idx[i] = np.int32(y)
    for i in range(n):
        h[idx[i]] += 1


@jit
def log_rare(a, thr):
    # zero, subnormal, inf or nan (a = bits of |x|): exact search
    return min(np.searchsorted(thr[: thr.size - 1], a, side="right"), thr.size - 1)


@jit
def log_tile(x, n, h, thr, table, shift):
    bits = x.view(np.int32)
    for i in range(n):
        a = bits[i] & np.int32(0x7FFFFFFF)
        b = np.int64(table[a >> shift])
        if b < 0:  # a cell holding an edge: exact search
            b = log_rare(a, thr)
        h[b] += 1


@jit
def lin_log_tile(x, n, h, scale, off, top, idx, hl, thr, table, shift, mm):
    # min/max (on order-preserving int32 keys: a float min/max loop does not vectorise), lin_tile
    # and log_tile of the same x in two loops: x is read twice, not four times, and the two
    # histograms' increments interleave (tools/kernel_parts.py)
    bits = x.view(np.int32)
    lo = mm[0]
    hi = mm[1]
    for i in range(n):
        y = x[i] * scale + off
        y = min(max(y, f32(0.0)), top) if y == y else f32(0.0)
        idx[i] = np.int32(y)
        b = bits[i]
        key = b ^ ((b >> 31) & np.int32(0x7FFFFFFF))
        lo = min(lo, key)
        hi = max(hi, key)
    mm[0] = lo
    mm[1] = hi
    for i in range(n):
        h[idx[i]] += 1
        a = bits[i] & np.int32(0x7FFFFFFF)
        b = np.int64(table[a >> shift])
        if b < 0:
            b = log_rare(a, thr)
        hl[b] += 1


@jit(fastmath={"reassoc"})
def all_finite(m, v, vd, n):
    s = f32(0.0)
    for i in range(n):
        s += (m[i] - m[i]) + (v[i] - v[i]) + (vd[i] - vd[i])
    return s == 0


@jit
def compact(m, v, vd, n, tm, tv, td):
    k = 0
    for i in range(n):
        if np.isfinite(m[i]) and np.isfinite(v[i]) and np.isfinite(vd[i]):
            tm[k] = m[i]
            tv[k] = v[i]
            td[k] = vd[i]
            k += 1
    return k


@jit
def from_key(key):
    b = np.empty(1, np.int32)
    b[0] = key ^ ((key >> 31) & np.int32(0x7FFFFFFF))
    return np.float64(b.view(np.float32)[0])


@jit
def fold(
    m, v, vd, c, flags, hu, hr, hlu, hlr, hlv, tq, tabq, tv, tabv, acc, counts, spos, su, sr, sok
):
    paper = flags[0] != 0
    inside = flags[1] != 0
    no_thr = flags[2] != 0
    top = f32(flags[3] + 1)
    sq = flags[4]
    sv = flags[5]
    scale, off, thr = c[6], c[7], c[8]
    n = m.size
    tm = np.empty(TILE, np.float32)
    tvv = np.empty(TILE, np.float32)
    td = np.empty(TILE, np.float32)
    tu = np.empty(TILE, np.float32)
    tr = np.empty(TILE, np.float32)
    idx = np.empty(TILE, np.int32)
    mmu = np.array([np.int32(0x7FFFFFFF), np.int32(-0x80000000)], np.int32)
    mmr = mmu.copy()
    # the moment sums' shift: mean u and r of the block's first SHIFT_POINTS finite elements
    # (contiguous: a strided pick costs a cache miss per point; float64 sums need no better shift)
    k = 0
    for i in range(n):
        if k == SHIFT_POINTS:
            break
        if np.isfinite(m[i]) and np.isfinite(v[i]) and np.isfinite(vd[i]):
            tm[k] = m[i]
            td[k] = vd[i]
            k += 1
    ur_tile(tm, td, tu, tr, k, c, paper, inside)
    cu = cr = 0.0
    for i in range(k):
        cu += tu[i]
        cr += tr[i]
    cu = cu / k if k else 0.0
    cr = cr / k if k else 0.0
    ok = bad = 0
    j = 0
    one_m = np.empty(1, np.float32)
    one_d = np.empty(1, np.float32)
    one_u = np.empty(1, np.float32)
    one_r = np.empty(1, np.float32)
    for t0 in range(0, n, TILE):
        t1 = min(n, t0 + TILE)
        xm, xv, xd = m[t0:t1], v[t0:t1], vd[t0:t1]
        k = t1 - t0
        if not all_finite(xm, xv, xd, k):
            k = compact(xm, xv, xd, k, tm, tvv, td)
            bad += t1 - t0 - k
            xm, xv, xd = tm, tvv, td
        ok += k
        ur_tile(xm, xd, tu, tr, k, c, paper, inside)
        # the sample's points in this tile: u and r while they are in cache
        while j < spos.size and spos[j] < t1:
            p = spos[j] - t0
            if k == t1 - t0:  # no element dropped: tile index = position
                su[j] = tu[p]
                sr[j] = tr[p]
                sok[j] = True
            else:
                fin = np.isfinite(m[t0 + p]) and np.isfinite(v[t0 + p]) and np.isfinite(vd[t0 + p])
                sok[j] = fin
                if fin:
                    one_m[0] = m[t0 + p]
                    one_d[0] = vd[t0 + p]
                    ur_tile(one_m, one_d, one_u, one_r, 1, c, paper, inside)
                    su[j] = one_u[0]
                    sr[j] = one_r[0]
            j += 1
        sums_tile(xm, xv, xd, tu, tr, k, cu, cr, acc, thr, no_thr)
        lin_log_tile(tu, k, hu, scale, off, top, idx, hlu, tq, tabq, sq, mmu)
        lin_log_tile(tr, k, hr, scale, off, top, idx, hlr, tq, tabq, sq, mmr)
        log_tile(xv, k, hlv, tv, tabv, sv)
    acc[4] = from_key(mmu[0]) if ok else np.inf
    acc[5] = from_key(mmu[1]) if ok else -np.inf
    acc[6] = from_key(mmr[0]) if ok else np.inf
    acc[7] = from_key(mmr[1]) if ok else -np.inf
    acc[8] = cu
    acc[13] = cr
    counts[0] = ok
    counts[1] = bad


@jit
def sort_f32_to_f64(x):
    """x (float32) sorted ascending, as float64: LSD radix sort on order-preserving keys, 3 passes."""
    n = x.size
    bits = x.view(np.int32)
    a = np.empty(n, np.uint32)
    b = np.empty(n, np.uint32)
    for i in range(n):
        k = bits[i]
        a[i] = np.uint32(k ^ ((k >> 31) & np.int32(0x7FFFFFFF))) ^ np.uint32(0x80000000)
    for shift in (0, 11, 22):
        counts = np.zeros(2049, np.int64)
        for i in range(n):
            counts[((a[i] >> shift) & np.uint32(0x7FF)) + 1] += 1
        for j in range(1, 2049):
            counts[j] += counts[j - 1]
        for i in range(n):
            d = (a[i] >> shift) & np.uint32(0x7FF)
            b[counts[d]] = a[i]
            counts[d] += 1
        a, b = b, a
    out = np.empty(n, np.float64)
    fl = b.view(np.float32)
    for i in range(n):
        k = np.int32(a[i] ^ np.uint32(0x80000000))
        b[i] = np.uint32(k ^ ((k >> 31) & np.int32(0x7FFFFFFF)))
    for i in range(n):
        out[i] = fl[i]
    return out
