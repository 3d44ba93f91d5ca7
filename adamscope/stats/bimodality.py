"""Bimodality measures: Hartigan's dip on a sample, and its p-value from diptest's table.

The dip is scale-free and |D(F) - D(G)| <= sup|F - G|, so the dip of a uniform sample of k points is
within about sqrt(ln(2/delta)/2k) of the whole tensor's (THEORY.md). The p-value is the dip test's
for the sample size actually used; report the dip itself as the effect size. Sarle's bimodality
coefficient is computed from exact moments in `sketch.Moments.bimodality_coefficient`.

With numba the dip is our own compiled Hartigan & Hartigan (1985) (`_dip_kernel`, checked against
`diptest.dipstat` in tests/stats/test_dip.py), which releases the GIL, so `dips_later` runs a
checkpoint's dips on a few threads next to reading and reduction; without numba, diptest's (which
holds the GIL) on the same threads. The null model's Monte Carlo dips (`null`) use `dip_of_sorted`.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np


def dip(x: np.ndarray) -> tuple[float, float]:
    """(dip, p-value) of a 1-D sample; (nan, nan) for fewer than 4 points.

    A constant or evenly spaced sample has dip 0 and p-value 1 (diptest's `allow_zero`
    convention). A float32 sample
    is sorted by the fused kernels' radix sort (~9x faster than np.sort here) when numba is there.
    """
    x = np.asarray(x)
    if x.size < 4:
        return math.nan, math.nan
    from adamscope.stats import fused

    if fused.available() and x.dtype == np.float32:
        xs = fused.sort_f32_to_f64(np.ascontiguousarray(x))
    else:
        xs = np.sort(x.astype(np.float64))
    d = dip_of_sorted(xs)
    return d, p_value(d, int(x.size))


def dip_of_sorted(xs: np.ndarray) -> float:
    """Hartigan's dip of sorted float64 points: ours (nogil) with numba, else diptest's."""
    from adamscope.stats import fused

    if fused.available():
        return fused.dip_sorted(xs)
    import diptest

    return float(diptest.dipstat(xs, sort_x=False))


def p_value(d: float, n: int) -> float:
    """diptest's p-value of dip d on n > 3 points: its table of the uniform's dip quantiles,
    interpolated in sqrt(n) (beyond 72,000 points, its last row; diptest warns)."""
    from diptest.consts import Consts

    return float(Consts.compute_pval_interpolation(n, d))


def dips_later(*samples: np.ndarray) -> list[Future[tuple[float, float]]]:
    """`dip` of each sample on the dip threads; the futures' results are dip's."""
    return [_pool().submit(_dip_by_name, x) for x in samples]


def _dip_by_name(x: np.ndarray) -> tuple[float, float]:
    return dip(x)  # looked up per call, so a wrapper set on the module (tools/) sees every dip


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """The process's dip threads: one per core, at most four (a dip takes ~2 ms and no memory
    beyond its sample)."""
    return ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="adamscope-dip")
