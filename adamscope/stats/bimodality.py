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

    A constant sample has dip 0 and p-value 1 (diptest's `allow_zero` convention).
    """
    import diptest

    x = np.asarray(x, dtype=np.float64)
    if x.size < 4:
        return math.nan, math.nan
    d, p = diptest.diptest(x)
    return float(d), float(p)
