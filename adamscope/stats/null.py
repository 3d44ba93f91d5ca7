"""The null model of Adam's ratio r = m_hat/sqrt(v_hat) for gradients independent across steps."""

from __future__ import annotations

import functools
import math
import threading
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

from adamscope.errors import AdamscopeError

Family = Literal["gaussian", "rademacher", "student_t3"]
FAMILIES: tuple[Family, ...] = ("gaussian", "rademacher", "student_t3")
LEVELS = (0.5, 0.9, 0.95, 0.99)  # the dip quantiles a NullModel reports
NEVER = 2**62  # judge_from_step when no step qualifies (beta1 < 0.5 with +-1 gradients, say)

_FAMILY_ID = {"gaussian": 0, "rademacher": 1, "student_t3": 2}
_TAIL_V = 1e-6  # v forgets lags beyond where b2**j < 1e-6 (the rest of its weight is dropped)
_TAIL_M = 1e-3  # m's lags are drawn one by one until b1**(2j) < 1e-3; the rest is a normal
_POOL = 2**17  # Monte Carlo coordinates per (family, betas, step) while every lag is drawn
_POOL_STEADY = 2**16  # ... and once the old lags come from `_far` (a bell: less is needed)
_N_CAP = 2**16  # the largest sample a dip is judged on; a bigger one is judged as if on 65,536
_N_SPREAD = 2048  # replicate size of the spread part of the dip's null (see _dip_null)
_REPS = 256  # direct replicate dips (n <= 2048): p-values resolve down to 1/257
_SPREAD_REPS = 128  # 2048-point replicates for the spread at larger n: down to 1/129
_SPREAD_EXP = 0.4  # the spread is scaled by (2048/n)**0.4, not the asymptotic **0.5 (_dip_null)
_RHO = np.logspace(-3.0, 3.0, 121)  # rho_hat's table grid (plus rho = 0)
_Z = 1.959963984540054  # two-sided 95% normal quantile for rho_hat's interval
_SEED = 0x5EED
_CACHE_VERSION = 1  # bump when any cached table (judge_from_step, rho) changes meaning


# ---------------------------------------------------------------- EMA weights and the sampler


def _check(b1: float, b2: float, t: float) -> tuple[float, float, float]:
    b1, b2 = round(float(b1), 12), round(float(b2), 12)
    if not (0.0 <= b1 < 1.0 and 0.0 < b2 < 1.0):
        raise AdamscopeError(f"betas ({b1}, {b2}) are outside [0, 1) x (0, 1)")
    if not float(t) >= 1.0:
        raise AdamscopeError(f"step = {t} < 1: the null model needs at least one Adam step")
    return b1, b2, float(t)


def _horizons(b1: float, b2: float) -> tuple[int, int]:
    """(J, H): lags drawn one by one for m (beyond J they hold < 1e-3 of its variance) and the
    horizon of v (beyond H the EMA weights hold < 1e-6 of it, and the null stops changing)."""
    j = 1 if b1 == 0.0 else max(1, math.ceil(math.log(_TAIL_M) / (2.0 * math.log(b1))))
    h = max(j, math.ceil(math.log(_TAIL_V) / math.log(b2)))
    return j, h


def horizon(b1: float, b2: float) -> int:
    """The step from which r's null no longer changes with t (its tables are those of this step)."""
    return int(_horizons(b1, b2)[1])


def _t_eff(b1: float, b2: float, t: float) -> int:
    """The step whose null has r's shape at step t: past H nothing that matters changes."""
    return int(min(round(t) if math.isfinite(t) else math.inf, _horizons(b1, b2)[1]))


def _scale(b1: float, b2: float, t: float, bias_correction: bool, convention: str) -> float:
    """r on the checkpoint's scale = this factor x m/sqrt(v) with the raw EMAs."""
    if convention not in ("torch", "paper"):
        raise AdamscopeError(f"unknown convention {convention!r}: use 'torch' or 'paper'")
    s = 1.0
    if bias_correction and math.isfinite(t):
        bc1 = -math.expm1(t * math.log(b1)) if b1 > 0.0 else 1.0
        s = math.sqrt(-math.expm1(t * math.log(b2))) / bc1
    return s * (b1 / math.sqrt(b2) if convention == "paper" else 1.0)


_TABLE = 2**20  # t3 gradients come from an inverse-CDF table (see _t3_table)


@functools.lru_cache(maxsize=1)
def _t3_grid() -> tuple[np.ndarray, np.ndarray]:
    """phi(w) on a grid of w = (pi p)**(1/3), where P(|g| > sqrt(3) cot(phi/2)) = p for g ~ t3
    (Kepler's equation phi - sin phi = pi p): smooth and nearly linear in w, so linear
    interpolation is accurate to ~1e-8."""
    w = np.linspace(0.0, math.pi ** (1.0 / 3.0), 16001)
    return w, np.concatenate([[0.0], _kepler(w[1:] ** 3)])


def _t3_isf(p: np.ndarray) -> np.ndarray:
    """|g| with P(|g'| > |g|) = p for g, g' ~ t3 (variance 3), 0 < p <= 1."""
    w, phi = _t3_grid()
    return math.sqrt(3.0) / np.tan(np.interp(np.cbrt(math.pi * p), w, phi) / 2.0)


@functools.lru_cache(maxsize=1)
def _t3_table() -> np.ndarray:
    """t3 quantiles at the midpoints (i + 1/2)/2**20: drawing a uniform index is inverse-CDF
    sampling with 20-bit uniforms (about twice as fast as a ratio-of-uniforms sampler here);
    the law is exact within 2**-21 in Kolmogorov distance, the tails cut at |g| = 132 (the 1e-6
    quantile; `_far` draws the heavy tail of the old lags exactly)."""
    upper = _t3_isf(2.0 * (np.arange(_TABLE // 2, dtype=np.float64) + 0.5) / _TABLE)
    table = np.concatenate([-upper, upper[::-1]]).astype(np.float32)
    table.flags.writeable = False
    return table


def _column(family: str, seed: int, lag: int, size: int) -> np.ndarray:
    """Gradients of `size` coordinates `lag` steps before the checkpoint: one stream per lag,
    so every step t sees the same gradients (common random numbers across t), and a smaller
    pool is a prefix of a larger one."""
    rng = np.random.default_rng([seed, _FAMILY_ID[family], lag])
    if family == "gaussian":
        return rng.standard_normal(size, dtype=np.float32)
    if family == "rademacher":
        bits = np.unpackbits(np.frombuffer(rng.bytes((size + 7) // 8), np.uint8))[:size]
        return bits.astype(np.float32) * 2.0 - 1.0
    return np.take(_t3_table(), rng.integers(0, _TABLE, size, dtype=np.uint32).astype(np.intp))


_MEMO: dict[tuple, tuple[int, np.ndarray, np.ndarray, np.ndarray]] = {}
_MEMO_LOCK = threading.Lock()
_CHUNK = 16  # lags per BLAS call


def _near(
    family: str, b1: float, b2: float, lags: int, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """M = sum a_j g_j, V = sum c_j g_j, Q = sum c_j g_j**2 over the last `lags` lags, with the
    raw EMA weights a_j = (1-b1) b1**j, c_j = (1-b2) b2**j. The last state per stream is kept,
    so a scan over t (judge_from_step) adds lags instead of starting over; only states at a
    multiple of _CHUNK lags are kept, so the result is the same whatever was computed before."""
    key = (family, b1, b2, size, seed)
    keep = seed == _SEED  # the internal pools only: null_r's other seeds would pile up here
    with _MEMO_LOCK:
        done, m, v, q = _MEMO.get(key, (0, None, None, None))
    if m is None or done > lags:
        done, m, v, q = 0, *(np.zeros(size, np.float32) for _ in range(3))
    else:
        m, v, q = m.copy(), v.copy(), q.copy()
    saved = None
    for lo in range(done, lags, _CHUNK):  # chunks start at multiples of _CHUNK whatever was kept,
        hi = min(lo + _CHUNK, lags)  # so float32 sums never depend on which steps came before
        if hi - lo < _CHUNK:
            saved = (lo, m.copy(), v.copy(), q.copy())  # the last aligned state
        j = np.arange(lo, hi)
        g = np.stack([_column(family, seed, int(k), size) for k in j])
        a = ((1.0 - b1) * b1**j).astype(np.float32)
        c = ((1.0 - b2) * b2**j).astype(np.float32)
        m += a @ g
        v += c @ g
        q += c @ (g * g)
    if keep:
        with _MEMO_LOCK:
            if lags % _CHUNK == 0:
                _MEMO[key] = (lags, m, v, q)
            elif saved is not None and saved[0] >= done:
                _MEMO[key] = saved
    return m, v, q


def _t3_truncated(p: float) -> tuple[float, float]:
    """For g ~ t3 (variance 3) and s with P(|g| > s) = p: E[g^2] and E[g^4] over |g| <= s.
    With y = g/sqrt(3) = cot(phi/2), P(|g| > s) = (phi - sin phi)/pi; the moments are closed
    forms in y (density (2/pi)(1 + y^2)**-2)."""
    y = float(_t3_isf(np.array([p]))[0]) / math.sqrt(3.0)
    e2 = 3.0 * (2.0 / math.pi) * (math.atan(y) - y / (1.0 + y * y))
    e4 = 9.0 * (4.0 / math.pi) * (y - 1.5 * math.atan(y) + y / (2.0 * (1.0 + y * y)))
    return e2, e4


def _kepler(target: np.ndarray) -> np.ndarray:
    """phi in (0, pi) with phi - sin(phi) = target, 0 < target <= pi: Newton from cbrt(6 target),
    left of the root (f is convex), so it converges monotonically after the first step; below
    phi = 0.1 series keep phi - sin(phi) and 1 - cos(phi) free of cancellation."""
    phi = np.minimum(np.cbrt(6.0 * target), math.pi)
    for _ in range(40):
        small = phi < 0.1
        f, fp = phi - np.sin(phi), 1.0 - np.cos(phi)
        if small.any():
            p, p2 = phi[small], phi[small] ** 2
            f[small] = p * p2 / 6.0 * (1.0 - p2 / 20.0 * (1.0 - p2 / 42.0 * (1.0 - p2 / 72.0)))
            fp[small] = p2 / 2.0 * (1.0 - p2 / 12.0 * (1.0 - p2 / 30.0))
        step = (f - target) / np.maximum(fp, 1e-300)
        phi = np.clip(phi - step, 1e-300, math.pi)
        if np.all(np.abs(step) <= 1e-12 * phi):
            break
    return phi


def _far(
    family: str, b1: float, b2: float, lo: int, hi: int, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(M_far, V_far, Q_far): sums a_j g_j, c_j g_j, c_j g_j**2 over the old lags lo <= j < hi,
    drawn without a column per lag so the cost does not grow with t. m's share there is < 1e-3
    of its variance: a normal of the exact variance (independent of v's part). Q_far, for
    Gaussian g: a Gamma matched in mean and variance (a weighted chi-square sum is nearly
    Gamma); for +-1: exactly sum c_j; for t3: g**2 has infinite variance, so the exceedances of
    a high threshold (~4 per coordinate) are drawn exactly (count, lag, value) and the bounded
    rest is moment-matched. V_far (rho_hat only) is the CLT normal."""
    s1 = b2**lo - b2**hi
    s2 = (1.0 - b2) * (b2 ** (2 * lo) - b2 ** (2 * hi)) / (1.0 + b2)
    a2 = (1.0 - b1) * (b1 ** (2 * lo) - b1 ** (2 * hi)) / (1.0 + b1)
    rng = np.random.default_rng([seed, _FAMILY_ID[family], 10**9, lo, hi])
    if family == "rademacher":
        q = np.full(size, s1, np.float32)
    elif family == "gaussian":
        q = (rng.standard_gamma(s1 * s1 / (2.0 * s2), size) * (2.0 * s2 / s1)).astype(np.float32)
    else:
        p = min(0.5, 4.0 / (hi - lo))
        e2, e4 = _t3_truncated(p)
        var = s2 * (e4 - e2 * e2)
        q = rng.standard_gamma((s1 * e2) ** 2 / var, size) * (var / (s1 * e2))
        counts = rng.binomial(hi - lo, p, size)
        lag = lo + rng.integers(0, hi - lo, int(counts.sum()))
        g2 = _t3_isf(p * (1.0 - rng.random(lag.size))) ** 2
        q += np.bincount(np.repeat(np.arange(size), counts), (1.0 - b2) * b2**lag * g2, size)
        q = q.astype(np.float32)
    e_g2 = 3.0 if family == "student_t3" else 1.0
    mv = rng.standard_normal((2, size)) * np.sqrt([[a2 * e_g2], [s2 * e_g2]])
    return mv[0].astype(np.float32), mv[1].astype(np.float32), q


def _stats(
    family: str, b1: float, b2: float, t_eff: int, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(M, V, Q) at step t_eff: each of the last J lags drawn (all of them while t_eff <= J + 32,
    where the far-part approximations would be crude), the older ones from `_far`."""
    j_m, _ = _horizons(b1, b2)
    lags = t_eff if t_eff <= j_m + 32 else j_m
    m, v, q = _near(family, b1, b2, lags, size, seed)
    if lags < t_eff:
        mf, vf, qf = _far(family, b1, b2, lags, t_eff, size, seed)
        m, v, q = m + mf, v + vf, q + qf
    return m, v, q


def _pool_size(b1: float, b2: float, t_eff: int) -> int:
    """Coordinates of the Monte Carlo pool at t_eff (see `_stats` for where lags are drawn)."""
    return _POOL if t_eff <= _horizons(b1, b2)[0] + 32 else _POOL_STEADY


def _ratio(m: np.ndarray, q: np.ndarray) -> np.ndarray:
    """m/sqrt(q), 0 where q == 0 (as adamscope defines r where v == 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = m / np.sqrt(q)
    r[q <= 0] = 0.0
    return r


def null_r(
    b1: float,
    b2: float,
    t: float,
    *,
    bias_correction: bool = True,
    convention: str = "torch",
    family: Family = "gaussian",
    n: int = 65536,
    seed: int = 0,
) -> np.ndarray:
    """A Monte Carlo sample of r under the null: each coordinate's gradients i.i.d. across steps.

    Args:
        b1, b2: Adam's betas. t: the checkpoint's step (>= 1; math.inf for the steady state).
        bias_correction, convention: as the checkpoint applies them ("torch" or "paper").
        family: the gradients' law: "gaussian", "rademacher" (+-1) or "student_t3" (3 dof).
        n: coordinates. seed: the same (arguments, seed) give the same sample.
    Returns:
        float32 array of n values of r on the checkpoint's scale.
    Raises:
        AdamscopeError: betas out of range, t < 1, unknown convention or family.
    """
    b1, b2, t = _check(b1, b2, t)
    if family not in _FAMILY_ID:
        raise AdamscopeError(f"unknown gradient family {family!r}: use one of {FAMILIES}")
    m, _, q = _stats(family, b1, b2, _t_eff(b1, b2, t), int(n), int(seed))
    return _ratio(m, q) * np.float32(_scale(b1, b2, t, bias_correction, convention))


# ---------------------------------------------------------------- the dip under the null


@functools.lru_cache(maxsize=24)  # 1 MB each
def _pool(family: str, b1: float, b2: float, t_eff: int) -> np.ndarray:
    """Sorted float64 pool of null values of m/sqrt(v) (raw EMAs); read-only."""
    m, _, q = _stats(family, b1, b2, t_eff, _pool_size(b1, b2, t_eff), _SEED)
    s = np.sort(_ratio(m, q)).astype(np.float64)
    s.flags.writeable = False
    return s


@functools.lru_cache(maxsize=512)
def _pool_dip(family: str, b1: float, b2: float, t_eff: int) -> float:
    """dip of the whole pool: dip(F) to within the noise of the pool's 131,072 (65,536 in
    steady state) points, ~0.0005 for a bell."""
    from adamscope.stats.bimodality import dip_of_sorted

    return dip_of_sorted(_pool(family, b1, b2, t_eff))


@functools.lru_cache(maxsize=16)  # 0.5 MB each
def _partition(size: int, n: int, k: int) -> np.ndarray:
    """(size // n, n) positions into a sorted pool: the k-th random partition into blocks of n,
    each block's positions ascending. The labels are independent of the values, so every block
    of every pool is an i.i.d. sample of its F, already sorted; one partition serves all pools."""
    label = np.random.default_rng([_SEED, size, n, k]).permutation(size) // n
    per = size // n
    idx = np.argsort(label.astype(np.uint16 if per < 65535 else np.int64), kind="stable")
    out = idx[: per * n].astype(np.int32).reshape(per, n)
    out.flags.writeable = False
    return out


def _dips(s: np.ndarray, n: int, count: int) -> np.ndarray:
    """Dips of `count` samples of n points from the sorted pool s (blocks of partitions)."""
    from adamscope.stats.bimodality import dip_of_sorted

    out: list[float] = []
    k = 0
    while len(out) < count:
        blocks = _partition(len(s), n, k)[: count - len(out)]
        out.extend(dip_of_sorted(row) for row in s[blocks])
        k += 1
    return np.asarray(out, np.float64)


def _location(s: np.ndarray, n: int, spread: np.ndarray) -> float:
    """Median dip of n pool points, read high by 1.645 standard errors.

    The medians of the direct replicates at n, n/4, n/16, ... (as many as the pool holds) and of
    the 2048-point ones are fitted by weighted least squares with a + b / sqrt(size), the
    variances taken from the 2048-point spread scaled by 2048/size (the median's ~ pi/2 / count
    of it). The form is exact for a bimodal F and reads high for a bell (whose dip falls
    faster); the upper bound covers the fit's noise, as large as the spread itself at n = 65,536.
    """
    sizes, meds, counts = [_N_SPREAD], [float(np.median(spread))], [len(spread)]
    k = n
    while k > _N_SPREAD:
        d = _dips(s, k, len(s) // k)
        sizes.append(k)
        meds.append(float(np.median(d)))
        counts.append(len(d))
        k //= 4
    size = np.asarray(sizes, np.float64)
    var = (math.pi / 2.0) * float(np.var(spread)) * (_N_SPREAD / size) / np.asarray(counts)
    design = np.stack([np.ones_like(size), 1.0 / np.sqrt(size)], axis=1)
    w = 1.0 / np.maximum(var, 1e-30)
    cov = np.linalg.pinv(design.T @ (design * w[:, None]))
    coef = cov @ (design.T @ (w * np.asarray(meds)))
    x = np.array([1.0, 1.0 / math.sqrt(n)])
    return float(x @ coef + 1.645 * math.sqrt(max(float(x @ cov @ x), 0.0)))


@functools.lru_cache(maxsize=1024)
def _dip_null(family: str, b1: float, b2: float, t_eff: int, n: int) -> np.ndarray:
    """Sorted sample of null dips on n points (n a bucket size, see `_bucket`).

    n <= 2048: _REPS direct replicates (blocks of the pool). Larger n: the location (median)
    from `_location`, the spread around it from _SPREAD_REPS 2048-point replicates scaled by
    (2048/n)**0.4. Asymptotically the dip's noise falls like n**-1/2 for a bimodal F and faster
    for a bell; but for a null at the edge of bimodality (t3 at t = 5, Gaussian at t = 3 for
    (0.9, 0.95)) brute force shows (q99 - median) * sqrt(n) growing by up to 1.5x from
    n = 2048 to 65,536, which the 0.4 power covers (1.41x at 65,536); for bells it is then
    ~2x too wide: conservative. The tests compare with brute force at n = 65,536.
    """
    s = _pool(family, b1, b2, t_eff)
    if n <= _N_SPREAD:
        out = _dips(s, n, _REPS)
    else:
        spread = _dips(s, _N_SPREAD, _SPREAD_REPS)
        loc = _location(s, n, spread)
        out = loc + (spread - np.median(spread)) * (_N_SPREAD / n) ** _SPREAD_EXP
    out = np.sort(np.maximum(out, 0.0))
    out.flags.writeable = False
    return out


def _bucket(n: int) -> int:
    """n rounded down to a half-octave 2**(k/2), at most 65,536: a null for fewer points is wider,
    so judging a dip on n points by the bucket's null is conservative; caches stay small."""
    n = min(int(n), _N_CAP)
    k = math.floor(2.0 * math.log2(n) + 1e-9)
    return min(n, int(2.0 ** (k / 2.0)))


def _diptest_p(dip: float, n: int) -> float:
    """diptest's own p-value (its table, interpolated in sqrt(n); uniform = least favourable)."""
    from diptest.consts import Consts

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n beyond the table: its last row, as diptest does
        return float(Consts.compute_pval_interpolation(int(min(n, 72000)), float(dip)))


@functools.lru_cache(maxsize=4096)
def _ref_quantile(n: int, level: float) -> float:
    """The dip that diptest's unimodal (uniform) reference exceeds with probability 1 - level."""
    lo, hi = 0.0, 0.5
    for _ in range(60):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if _diptest_p(mid, n) > 1.0 - level else (lo, mid)
    return hi


# ---------------------------------------------------------------- the std of r under the null


def _lag_weights(b1: float, b2: float, t_eff: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, c, count): EMA weights at every lag until a_j**2 < 1e-12 a_0**2, then blocks of lags
    over which the weights change by < 1% (count = lags per block, weights at its midpoint)."""
    j_a = 1 if b1 == 0.0 else math.ceil(math.log(1e-12) / (2.0 * math.log(b1)))
    near = np.arange(min(t_eff, j_a), dtype=np.float64)
    width = max(1, int(0.01 / -math.log(max(b1, b2))))
    starts = np.arange(len(near), t_eff, width, dtype=np.float64)
    counts = np.minimum(width, t_eff - starts)
    lags = np.concatenate([near, starts + (counts - 1.0) / 2.0])
    count = np.concatenate([np.ones_like(near), counts])
    return (1.0 - b1) * b1**lags, (1.0 - b2) * b2**lags, count


def _gaussian_r2(b1: float, b2: float, t_eff: int) -> float:
    """E[(m/sqrt(v))**2] for Gaussian g, exact up to the 1e-6 truncation: with
    1/v = int_0^inf exp(-s v) ds and E exp(-s c g^2) = (1 + 2 s c)**-1/2,
    E[m^2/v] = int_0^inf prod_k (1 + 2 s c_k)**-1/2 sum_j a_j^2/(1 + 2 s c_j) ds,
    integrated in x = log s by the trapezoid rule (spectrally accurate for this smooth,
    exponentially decaying integrand; the nearest singularity is pi away from the real axis)."""
    a, c, count = _lag_weights(b1, b2, t_eff)
    x = math.log(1e-12 / float(np.dot(count, c))) + np.arange(0.0, 100.0, 0.25)
    s2c = 2.0 * np.exp(x)[:, None] * c[None, :]
    log_prod = -0.5 * (np.log1p(s2c) @ count)
    inner = (1.0 / (1.0 + s2c)) @ (count * a * a)
    return float(np.sum(np.exp(x + log_prod) * inner) * 0.25)


def _rademacher_r2(b1: float, b2: float, t_eff: int) -> float:
    """E[(m/sqrt(v))**2] for +-1 gradients: v = sum c_j is constant, so sum a_j^2 / sum c_j."""
    sum_a2 = (
        (1.0 - b1) ** 2 * -math.expm1(2 * t_eff * math.log(b1)) / (1.0 - b1 * b1) if b1 else 1.0
    )
    return sum_a2 / -math.expm1(t_eff * math.log(b2))


@functools.lru_cache(maxsize=512)
def _raw_r2(family: str, b1: float, b2: float, t_eff: int) -> float:
    if family == "gaussian":
        return _gaussian_r2(b1, b2, t_eff)
    if family == "rademacher":
        return _rademacher_r2(b1, b2, t_eff)
    s = _pool(family, b1, b2, t_eff)
    return float(np.dot(s, s) / len(s))  # Monte Carlo (relative error ~ 0.3%)


# ---------------------------------------------------------------- the public null


@dataclass(frozen=True, eq=False)
class NullModel:
    """r's null at one (betas, step, sample size, bias correction, convention).

    r_std: std of r for Gaussian gradients (exact); r_std_by_family: also +-1 (exact) and t3
    (Monte Carlo). dip_pool: dip of the whole Monte Carlo pool per family (131,072 values,
    65,536 in steady state: dip(F) + ~0.0005).
    dip_q: quantiles (LEVELS) of dip(r) on n_sample null points, the largest over the families
    (a conservative envelope). dip_ref_q: diptest's unimodal reference quantiles at n_sample.
    unimodal: every family's pool dip and 0.99 dip quantile are within the reference's 0.99
    quantile, so diptest's p-values are valid (and conservative) against the null.
    """

    beta1: float
    beta2: float
    step: float
    n_sample: int
    bias_correction: bool
    convention: str
    r_std: float
    r_std_by_family: dict[str, float]
    dip_pool: dict[str, float]
    dip_q: dict[float, float]
    dip_ref_q: dict[float, float]
    unimodal: bool
    replicates: dict[str, np.ndarray]

    def p_value(self, dip: float) -> float:
        """P(dip >= `dip` under the null) for a dip computed on n_sample points.

        The larger of diptest's p-value and, per family, the empirical (1 + k)/(R + 1) of the R
        null replicates with dip >= `dip`. When the null is unimodal and no replicate reaches
        `dip`, the empirical term (which cannot go below 1/(R + 1)) is dropped: diptest's
        p-value is then valid against the null and resolves further.
        """
        if not math.isfinite(dip):
            return math.nan
        p = _diptest_p(dip, self.n_sample)
        for reps in self.replicates.values():
            k = len(reps) - int(np.searchsorted(reps, dip, side="left"))
            if k > 0 or not self.unimodal:
                p = max(p, (1.0 + k) / (len(reps) + 1.0))
        return p


def null_stats(
    b1: float,
    b2: float,
    t: float,
    n_sample: int,
    *,
    bias_correction: bool = True,
    convention: str = "torch",
) -> NullModel:
    """The null of r at the checkpoint's (betas, step) for a dip computed on n_sample points.

    Cached: repeated calls cost microseconds. Raises AdamscopeError on bad betas, step or
    convention, or n_sample < 4.
    """
    b1, b2, t = _check(b1, b2, t)
    if int(n_sample) < 4:
        raise AdamscopeError(f"n_sample = {n_sample}: the dip needs at least 4 points")
    return _null_stats(b1, b2, t, int(n_sample), bool(bias_correction), convention)


@functools.lru_cache(maxsize=4096)
def _null_stats(
    b1: float, b2: float, t: float, n: int, bias_correction: bool, convention: str
) -> NullModel:
    t_eff, nb = _t_eff(b1, b2, t), _bucket(n)
    scale = _scale(b1, b2, t, bias_correction, convention)
    reps = {f: _dip_null(f, b1, b2, t_eff, nb) for f in FAMILIES}
    dip_q = {q: max(float(np.quantile(r, q)) for r in reps.values()) for q in LEVELS}
    ref_q = {q: _ref_quantile(nb, q) for q in LEVELS}
    std = {f: scale * math.sqrt(_raw_r2(f, b1, b2, t_eff)) for f in FAMILIES}
    return NullModel(
        beta1=b1,
        beta2=b2,
        step=t,
        n_sample=n,
        bias_correction=bias_correction,
        convention=convention,
        r_std=std["gaussian"],
        r_std_by_family=std,
        dip_pool={f: _pool_dip(f, b1, b2, t_eff) for f in FAMILIES},
        dip_q=dip_q,
        dip_ref_q=ref_q,
        unimodal=_unimodal_at(b1, b2, t_eff, nb, 0.01),
        replicates=reps,
    )


def null_r_std(
    b1: float, b2: float, t: float, *, bias_correction: bool = True, convention: str = "torch"
) -> float:
    """Std of r at step t for Gaussian gradients independent across steps (exact; cheap: no
    Monte Carlo, so analyze can report it for every row)."""
    b1, b2, t = _check(b1, b2, t)
    scale = _scale(b1, b2, t, bias_correction, convention)
    return scale * math.sqrt(_raw_r2("gaussian", b1, b2, _t_eff(b1, b2, t)))


def reference_dip_quantile(n_sample: int, level: float = 0.99) -> float:
    """The `level` quantile of the dip of n_sample points from diptest's unimodal reference: the
    null's dip quantile from judge_from_step on (where the null is unimodal and diptest's
    p-values are valid against it)."""
    if int(n_sample) < 4:
        raise AdamscopeError(f"n_sample = {n_sample}: the dip needs at least 4 points")
    return _ref_quantile(_bucket(int(n_sample)), float(level))


# ---------------------------------------------------------------- from when a dip can be judged


def _schedule(horizon: int) -> list[int]:
    """Steps judge_from_step tries: every step to 64, then 25% apart, up to v's horizon."""
    ts = list(range(1, min(64, horizon) + 1))
    while ts[-1] < horizon:
        ts.append(min(horizon, math.ceil(ts[-1] * 1.25)))
    return ts


def _unimodal_at(b1: float, b2: float, t_eff: int, nb: int, alpha: float) -> bool:
    """Are every family's pool dip and 1 - alpha dip quantile within diptest's unimodal
    reference (at level 1 - alpha, for nb points)? NullModel.unimodal is this at alpha = 0.01."""
    ref = _ref_quantile(nb, 1.0 - alpha)
    for f in ("rademacher", "student_t3", "gaussian"):  # the likeliest to stay bimodal first
        if _pool_dip(f, b1, b2, t_eff) > ref:  # dip(F) itself above the reference: cheap, sure
            return False
        if float(np.quantile(_dip_null(f, b1, b2, t_eff, nb), 1.0 - alpha)) > ref:
            return False
    return True


def judge_from_step(
    b1: float, b2: float, *, n_sample: int, bias_correction: bool = True, alpha: float = 0.01
) -> int:
    """The first step from which r's null is unimodal at level alpha for a dip on n_sample points.

    Before it, even gradients independent across steps give a bimodal r (exactly +-1 at t = 1),
    so a bimodal r says nothing: "too early to judge". From it on, the conservative null (the
    envelope over Gaussian, +-1 and t3 gradients) has its 1 - alpha dip quantile within diptest's
    unimodal reference, so diptest's p-value can be used against it. The dip is scale-free, so
    neither bias correction nor the convention changes the answer (`bias_correction` is accepted
    for symmetry with the other functions). The step is the first of a scan (every step to 64,
    then 25% apart) that passes and whose next two scan steps pass too (the check is Monte
    Carlo). NEVER when no step up to v's horizon passes: with beta1 < 0.5 and +-1 gradients the
    null is a Cantor-like set that never turns unimodal. Cached per (betas, sample-size bucket,
    alpha).

    Raises:
        AdamscopeError: betas out of range, n_sample < 4, or alpha outside (0, 1).
    """
    b1, b2, _ = _check(b1, b2, 1.0)
    if int(n_sample) < 4:
        raise AdamscopeError(f"n_sample = {n_sample}: the dip needs at least 4 points")
    if not 0.0 < alpha < 1.0:
        raise AdamscopeError(f"alpha = {alpha} is outside (0, 1)")
    return _judge(b1, b2, _bucket(int(n_sample)), round(float(alpha), 12))


@functools.lru_cache(maxsize=256)
def _judge(b1: float, b2: float, nb: int, alpha: float) -> int:
    from adamscope.stats.cache import cached_array

    key = (_CACHE_VERSION, b1, b2, nb, alpha)
    return int(cached_array("null-judge", key, lambda: np.int64(_judge_scan(b1, b2, nb, alpha))))


def _judge_scan(b1: float, b2: float, nb: int, alpha: float) -> int:
    ts = _schedule(_horizons(b1, b2)[1])
    i = 0
    while i < len(ts):
        if not _unimodal_at(b1, b2, ts[i], nb, alpha):
            i += 1
            continue
        later = [k for k in range(i + 1, min(i + 3, len(ts)))]
        failed = [k for k in later if not _unimodal_at(b1, b2, ts[k], nb, alpha)]
        if not failed:
            return ts[i]
        i = failed[-1] + 1
    return NEVER


# ---------------------------------------------------------------- rho from the RMS of r


@functools.lru_cache(maxsize=256)
def _rho_table(family: str, b1: float, b2: float, t_eff: int) -> tuple[np.ndarray, np.ndarray]:
    from adamscope.stats.cache import cached_array

    key = (_CACHE_VERSION, family, b1, b2, t_eff)
    both = cached_array("null-rho", key, lambda: np.stack(_rho_table_mc(family, b1, b2, t_eff)))
    return both[0], both[1]


def _rho_table_mc(family: str, b1: float, b2: float, t_eff: int) -> tuple[np.ndarray, np.ndarray]:
    """(rms, var): RMS of r and variance of r**2 (raw EMAs) at rho = 0 and on the _RHO grid, for
    the paper's Section 4.2 model g[i, t] = rho c_i + e[i, t] (c fixed per coordinate, e i.i.d.
    in time), c and e both +-1 or both standard normal. One Monte Carlo pool serves every rho
    (common random numbers), so the table is smooth; a running maximum makes it monotone."""
    size = _pool_size(b1, b2, t_eff)
    m, v, q = _stats(family, b1, b2, t_eff, size, _SEED)
    if family == "rademacher":
        c = np.ones(size, np.float32)  # r**2 is the same for c = -1 (flip every sign)
    else:
        rng = np.random.default_rng([_SEED, _FAMILY_ID[family], 2 * 10**9])
        c = rng.standard_normal(size, dtype=np.float32)
    a_sum = -math.expm1(t_eff * math.log(b1)) if b1 > 0.0 else 1.0  # sum of m's weights
    c_sum = -math.expm1(t_eff * math.log(b2))
    v2, rms, var = 2.0 * v, [], []
    for rho in np.concatenate([[0.0], _RHO]).astype(np.float32):
        rc = rho * c
        r2 = (rc * np.float32(a_sum) + m) ** 2
        r2 /= np.maximum(rc * (rc * np.float32(c_sum) + v2) + q, np.float32(1e-30))
        mean = float(np.mean(r2, dtype=np.float64))
        rms.append(math.sqrt(mean))
        r2d = r2.astype(np.float64)  # r**4 overflows float32 where v is ~0
        var.append(max(float(np.mean(r2d * r2d)) - mean * mean, 0.0))
    return np.maximum.accumulate(np.asarray(rms)), np.asarray(var)


def _invert(rms: np.ndarray, limit: float, x: float) -> float:
    """rho with table rms(rho) = x: linear in log rho between grid points (20 a decade: the
    error is < 0.3% of rho); below the grid rms**2 - rms0**2 grows like rho**2, above it
    limit - rms falls like rho**-2 (both the models' leading terms)."""
    if not x > rms[0]:
        return 0.0
    if x >= limit:
        return math.inf
    grid = rms[1:]
    if x <= grid[0]:
        return float(_RHO[0] * math.sqrt((x * x - rms[0] ** 2) / (grid[0] ** 2 - rms[0] ** 2)))
    if x >= grid[-1]:
        return float(_RHO[-1] * math.sqrt(max(limit - grid[-1], 0.0) / (limit - x)))
    i = int(np.searchsorted(grid, x, side="right"))  # grid[i-1] <= x < grid[i]
    f = (x - grid[i - 1]) / (grid[i] - grid[i - 1])
    return float(_RHO[i - 1] * (_RHO[i] / _RHO[i - 1]) ** f)


def rho_hat(
    r_rms: float,
    b1: float,
    b2: float,
    t: float,
    *,
    numel: int,
    bias_correction: bool = True,
    convention: str = "torch",
) -> tuple[float, float, float]:
    """Time correlation rho of the gradients from the RMS of r, by the paper's Section 4.2 model.

    The model g[i, t] = rho c_i + e[i, t] (c_i, e ~ +-1, c fixed in time) gives an RMS of r that
    grows with rho, from the null's at rho = 0 (0.229 for b1 = 0.9 in steady state) to the
    limit |r| -> sum(a)/sqrt(sum(c)) (1 with the torch convention). It is tabulated at the
    checkpoint's own step and inverted. Reference: 0.247 / 0.711 / 0.995 at rho = 0.1 / 1 / 10
    for (0.9, 0.95), t = 300 (THEORY.md).

    Args:
        r_rms: sqrt(mean(r**2)) over the tensor (or layer), on the checkpoint's scale.
        numel: how many coordinates r_rms averages (its sampling error).
    Returns:
        (rho, lo, hi): rho from the +-1 model; 0 at or below the null's RMS, inf at or above the
        limit. [lo, hi] spans what the +-1 and the Gaussian versions of the model give for
        r_rms -/+ 1.96 standard errors (the sampling error of r_rms over numel i.i.d.
        coordinates plus the Monte Carlo error of the table, each by the delta method): model
        spread plus noise, not a coverage guarantee against other gradient laws.
    Raises:
        AdamscopeError: bad betas, step, convention or numel.
    """
    b1, b2, t = _check(b1, b2, t)
    if int(numel) < 1:
        raise AdamscopeError(f"numel = {numel}: r_rms needs at least one coordinate")
    x = float(r_rms) / _scale(b1, b2, t, bias_correction, convention)
    if not math.isfinite(x):
        return math.nan, math.nan, math.nan
    t_eff = _t_eff(b1, b2, t)
    # the rho -> inf limit |r| = sum(a)/sqrt(sum(c)) at the true t: exactly 1 on the torch scale
    limit = _scale(b1, b2, t, False, "torch") / _scale(b1, b2, t, True, "torch")
    limit *= 1.0 - 1e-12 if math.isfinite(t) else 1.0
    rho = _invert(_rho_table("rademacher", b1, b2, t_eff)[0], limit, x)
    lo, hi = math.inf, 0.0
    for family in ("rademacher", "gaussian"):
        rms, var = _rho_table(family, b1, b2, t_eff)
        var_x = float(np.interp(x, rms, var)) / (4.0 * max(x, rms[0]) ** 2)
        se = math.sqrt(var_x * (1.0 / int(numel) + 1.0 / _pool_size(b1, b2, t_eff)))
        lo = min(lo, _invert(rms, limit, x - _Z * se))
        hi = max(hi, _invert(rms, limit, x + _Z * se))
    return rho, lo, hi
