"""The CPU engine's per-element work in one compiled pass (numba): u, r, sums, min/max, five histograms.

`fold` folds a block of float32 (m, v, vd) into five int64 histograms and returns the block's
scalars in the layout of the torch path (`folder.Folder.block`), so both paths share the float64
merge. The block is walked in L1-sized tiles; per tile, each step is one simple loop that the
compiler vectorises: u and r in float32 with torch's order of operations (IEEE, no fast-math), the
sums in float64 (reassociated, so they vectorise); then per quantity (u, r) one loop for min/max (on
order-preserving integer keys) and the linear bin, one for both histograms' increments. The
histogram bins are found without a logarithm:

* linear u/r bins: trunc(clamp(x * scale + offset, 0, nb + 1)) in float32, as the torch path;
* log-magnitude bins: for a non-negative float32, x >= e  <=>  bits(x) >= bits(ceil32(e)), so each
  edge 10**(LOG_LO + j/bpd) becomes an integer threshold. The top bits of |x| (exponent and K
  mantissa bits) index a table holding the bin shared by every float of that cell; the ~1% of cells
  that hold a threshold (and zero/subnormal/inf/nan cells that do) say -1 and take a binary search
  over the thresholds. The bin of x is exactly the number of edges <= |x|: no log10 rounding.

numba is a dependency, but the path is optional: `available()` says whether it can run; without it
(or with ADAMSCOPE_KERNEL=torch) the torch path does the same work, slower, binning a float32 log10
instead of comparing with the edges. The two paths agree to an ulp or two in u and r: the kernel's
sqrt is correctly rounded (IEEE, as numpy's), torch's CPU sqrt is not always (tests/stats/test_fused.py).

The same gate serves the dip: `sort_f32_to_f64` (a radix sort) and `dip_sorted` (`_dip_kernel`).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from adamscope.stats.sketch import LOG_HI, LOG_LO

if TYPE_CHECKING:
    from adamscope.stats.adam import AdamCoefficients

log = logging.getLogger(__name__)

N_SCALARS = 18  # v_sum, m_sq, below, zeros, ulo, uhi, rlo, rhi, cu, Su1..Su4, cr, Sr1..Sr4


@functools.cache
def available() -> bool:
    """True when numba imports and the kernels compile (compiled once, then cached on disk)."""
    try:
        _warm_up()
    except Exception as e:  # noqa: BLE001 - any failure means: use the torch path
        log.debug("fused CPU kernel unavailable (%s): using the torch path", e)
        return False
    return True


def _warm_up() -> None:
    """Load every kernel once on a tiny input (from numba's disk cache: ~0.3 s the first time in a
    process, compiling ~5 s the first time ever), so no worker thread waits on the compiler."""
    from adamscope.stats.adam import coefficients
    from adamscope.vocab import HyperParams

    k = coefficients(HyperParams(beta1=0.9, beta2=0.95, eps=1e-8), 10.0)
    x = np.linspace(-1.0, 1.0, 64, dtype=np.float32)
    v = x * x
    n_log = (LOG_HI - LOG_LO) * 20
    hists = tuple(np.zeros(s, np.int64) for s in (66, 66, n_log + 2, n_log + 2, n_log + 2))
    pos = np.arange(0, 64, 3, dtype=np.int64)
    sample = (pos, np.empty(pos.size, np.float32), np.empty(pos.size, np.float32))
    fold(x, v, v, k, hists, 64, 20, 1e-20, (*sample, np.zeros(pos.size, np.bool_)))
    dip_sorted(sort_f32_to_f64(x))


def ceil_f32_bits(edges: np.ndarray) -> np.ndarray:
    """int32 bit patterns of the smallest float32 >= each non-negative float64 edge (inf stays)."""
    with np.errstate(over="ignore"):
        f = edges.astype(np.float32)
    up = f.astype(np.float64) < edges
    f[up] = np.nextafter(f[up], np.float32(np.inf))
    return f.view(np.int32)


@functools.lru_cache(maxsize=8)  # 0.5 MB each; one per distinct step in a checkpoint
def log_tables(
    bpd: int, scale: float = 1.0, power: float = 1.0
) -> tuple[np.ndarray, np.ndarray, int]:
    """(thresholds, table, shift) binning y = (x / scale) ** (1 / power) into log10 bins.

    For float32 x >= 0, edge j (j = 0..n_log) is scale * (10**(LOG_LO + j/bpd))**power in x, and
    thresholds[j] the int32 bit pattern of the smallest float32 >= it (x >= edge <=> bits(x) >=
    threshold); thresholds[n_log + 1] is +inf's. The bin of x (0 = underflow, n_log + 1 = overflow)
    is the number of the first n_log + 1 thresholds <= bits(x). table[bits >> shift] holds that
    number for every bit pattern of its cell, or -1 where a threshold falls inside the cell.
    """
    n_log = (LOG_HI - LOG_LO) * bpd
    j = np.arange(n_log + 1, dtype=np.float64)
    with np.errstate(under="ignore", over="ignore"):
        edges = scale * (10.0 ** (LOG_LO + j / bpd)) ** power
    thr = np.concatenate([ceil_f32_bits(edges), [np.int32(0x7F800000)]]).astype(np.int32)
    per_octave = bpd * math.log10(2.0) / power
    k = min(14, max(10, math.ceil(math.log2(per_octave * 100))))  # ~1% of cells hold an edge
    shift = 23 - k
    lows = np.arange(1 << (8 + k), dtype=np.int64) << shift
    finite = thr[: n_log + 1].astype(np.int64)
    at_low = np.searchsorted(finite, lows, side="right")
    at_high = np.searchsorted(finite, lows + (1 << shift) - 1, side="right")
    table = np.where(at_low == at_high, np.minimum(at_low, n_log + 1), -1).astype(np.int16)
    return thr, table, shift


def coefficient_array(k: AdamCoefficients, nb: int, below_thr: float | None) -> np.ndarray:
    """The float32 scalars the kernels take (see `_kernels`)."""
    half = k.hist_range
    return np.array(
        [
            k.bc1 if k.bias_correction else 1.0,
            k.sqrt_bc2 if k.bias_correction else 1.0,
            k.bc2 if k.bias_correction else 1.0,
            k.eps,
            k.beta1,
            k.beta2,
            nb / (2.0 * half),
            nb / 2.0 + 1.0,
            below_thr if below_thr is not None else 0.0,
        ],
        dtype=np.float64,
    ).astype(np.float32)


def fold(
    m: np.ndarray,
    v: np.ndarray,
    vd: np.ndarray,
    k: AdamCoefficients,
    hists: tuple[np.ndarray, ...],
    nb: int,
    bpd: int,
    below_thr: float | None,
    sample: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, int, int]:
    """Fold one block of float32 1-D arrays; returns (scalars[18], finite count, non-finite count).

    `hists` = (u, r, log10_abs_u, log10_abs_r, log10_sqrt_vhat) int64 arrays, updated in place.
    The scalars are those of the finite elements (in the layout described at N_SCALARS).
    `sample` = (positions in the block: sorted int64 in [0, len(m)); u, r float32 and ok bool
    arrays as long): the kernel fills u and r at those positions while their tile is in cache, and
    ok (False where m, v or vd is not finite there).
    """
    kern = _kernels().fold
    tq, tabq, sq = log_tables(bpd)
    tv, tabv, sv = log_tables(bpd, k.bc2, 2.0)
    coef = coefficient_array(k, nb, below_thr)
    flags = np.array(
        [int(k.convention == "paper"), int(k.eps_inside_sqrt), int(below_thr is None), nb, sq, sv],
        dtype=np.int64,
    )
    out = np.zeros(N_SCALARS, np.float64)
    counts = np.zeros(2, np.int64)
    if sample is None:
        sample = (_NO_POS, _NO_F32, _NO_F32, _NO_OK)
    kern(m, v, vd, coef, flags, *hists, tq, tabq, tv, tabv, out, counts, *sample)
    return out, int(counts[0]), int(counts[1])


_NO_POS = np.zeros(0, np.int64)
_NO_F32 = np.zeros(0, np.float32)
_NO_OK = np.zeros(0, np.bool_)


def sort_f32_to_f64(x: np.ndarray) -> np.ndarray:
    """A contiguous float32 array sorted ascending, as float64 (radix sort, nogil)."""
    return _kernels().sort_f32_to_f64(x)


def dip_sorted(xs: np.ndarray) -> float:
    """Hartigan's dip of a sorted float64 array (nogil; `_dip_kernel` describes the algorithm)."""
    return float(_dip_kernel().dip_sorted(xs))


@functools.cache
def _kernels() -> Any:
    from adamscope.stats import _fused_kernels

    return _fused_kernels


@functools.cache
def _dip_kernel() -> Any:
    from adamscope.stats import _dip_kernel

    return _dip_kernel
