"""Bimodality measures: Hartigan's dip (via the `diptest` package) on a sample.

The dip is scale-free and |D(F) - D(G)| <= sup|F - G|, so the dip of a uniform sample of k points is
within about sqrt(ln(2/delta)/2k) of the whole tensor's (THEORY.md). The p-value is the dip test's
for the sample size actually used; report the dip itself as the effect size. Sarle's bimodality
coefficient is computed from exact moments in `sketch.Moments.bimodality_coefficient`.
"""

from __future__ import annotations

import math

import numpy as np


def dip(x: np.ndarray) -> tuple[float, float]:
    """(dip, p-value) of a 1-D sample; (nan, nan) for fewer than 4 points.

    A constant sample has dip 0 and p-value 1 (diptest's `allow_zero` convention). A float32 sample
    is sorted by the fused kernels' radix sort (~9x faster than np.sort here) when numba is there.
    """
    import diptest

    x = np.asarray(x)
    if x.size < 4:
        return math.nan, math.nan
    from adamscope.stats import fused

    if x.dtype == np.float32 and fused.available():
        xs = fused.sort_f32_to_f64(np.ascontiguousarray(x))
    else:
        xs = np.sort(x.astype(np.float64))
    d, p = diptest.diptest(xs, sort_x=False)
    return float(d), float(p)
