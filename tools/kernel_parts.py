"""Per-element cost of each step of the fused CPU kernel, one thread, data from DRAM.

    python tools/kernel_parts.py [--elements 4194304] [--reps 10]

Runs each tile function of `adamscope.stats._fused_kernels` over the same synthetic block (v
log-normal around 1e-8, r ~ N(0, 0.25)) and prints ns per element for each step (u and r first,
then each other step on top of it; the fastest of `reps` interleaved runs). The last two are
what `fold` runs for u and r since the third session (min/max and both histograms in one
function). docs/performance.md quotes it.
"""

from __future__ import annotations

import argparse
import math
import time

import numba as nb
import numpy as np

from adamscope.stats import fused
from adamscope.stats.adam import coefficients
from adamscope.vocab import HyperParams

K = fused._kernels()
STEPS = (
    "loop",
    "u and r",
    "finite check",
    "sums",
    "linear bins",
    "log |u|",
    "log |r|",
    "log v",
    "u: min/max, lin, log",
    "r: min/max, lin, log",
)


@nb.njit(nogil=True)
def _drive(which, m, v, c, tq, tabq, sq, tv, tabv, sv):  # noqa: ANN001, ANN202, PLR0913
    tile = K.TILE
    tu = np.empty(tile, np.float32)
    tr = np.empty(tile, np.float32)
    idx = np.empty(tile, np.int32)
    acc = np.zeros(18)
    mm = np.zeros(2, np.int32)
    h = np.zeros(2000, np.int64)
    h2 = np.zeros(2000, np.int64)
    total = 0.0
    for t0 in range(0, m.size - tile + 1, tile):
        xm = m[t0 : t0 + tile]
        xv = v[t0 : t0 + tile]
        total += xm[0]
        if which >= 1:
            K.ur_tile(xm, xv, tu, tr, tile, c, False, False)
        if which == 2:
            total += K.all_finite(xm, xv, xv, tile)
        if which == 3:
            K.sums_tile(xm, xv, xv, tu, tr, tile, 0.0, 0.0, acc, c[8], False)
        if which == 4:
            K.lin_tile(tu, tile, h, c[6], c[7], np.float32(513), idx)
        if which == 5:
            K.log_tile(tu, tile, h, tq, tabq, sq)
        if which == 6:
            K.log_tile(tr, tile, h, tq, tabq, sq)
        if which == 7:
            K.log_tile(xv, tile, h, tv, tabv, sv)
        if which == 8:
            K.lin_log_tile(tu, tile, h, c[6], c[7], np.float32(513), idx, h2, tq, tabq, sq, mm)
        if which == 9:
            K.lin_log_tile(tr, tile, h, c[6], c[7], np.float32(513), idx, h2, tq, tabq, sq, mm)
    return total + acc[0] + h2[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--elements", type=int, default=1 << 22)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    n, reps = args.elements, args.reps
    k = coefficients(HyperParams(beta1=0.9, beta2=0.95, eps=1e-8), 2000.0)
    rng = np.random.default_rng(0)
    v = (1e-8 * rng.lognormal(0, 1, n)).astype(np.float32)
    m = (0.25 * rng.standard_normal(n) * np.sqrt(v) * k.bc1 / np.sqrt(k.bc2)).astype(np.float32)
    c = fused.coefficient_array(k, 512, float(np.float32(k.eps**2 * k.bc2)))
    args = (m, v, c, *fused.log_tables(20), *fused.log_tables(20, k.bc2, 2.0))
    for which in range(len(STEPS)):
        _drive(which, *args)
    cost = [math.inf] * len(STEPS)
    for _ in range(reps):  # interleaved, the fastest of each: the machine may be shared
        for which in range(len(STEPS)):
            t = time.perf_counter()
            _drive(which, *args)
            cost[which] = min(cost[which], (time.perf_counter() - t) / n * 1e9)
    for which, name in enumerate(STEPS):
        base = 0.0 if which == 0 else cost[0] if which == 1 else cost[1]
        print(f"{name:<12} {cost[which] - base:6.2f} ns/element")


if __name__ == "__main__":
    main()
