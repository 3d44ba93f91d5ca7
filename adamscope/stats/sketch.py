"""`TensorSketch`: a mergeable summary of u and r over one tensor (or a piece, or a layer); no I/O.

A sketch holds exact counts, float64 central moments up to the 4th (merged with Chan/Pebay's
formulas), min/max, fixed-edge histograms with under/overflow bins, and a uniform sample of
(u, r) for Hartigan's dip. Pieces of one tensor merge exactly (counts, histograms, the sample) and
order-independently up to float64 rounding (moments).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from adamscope.config import StageThresholds, StatsConfig
from adamscope.errors import AdamscopeError
from adamscope.vocab import HyperParams

# Log-magnitude histograms cover 1e-45 .. 1e39 so every finite non-zero float32 magnitude falls in a
# bin; their underflow bin therefore holds exactly the zeros and their overflow bin stays empty.
LOG_LO = -45
LOG_HI = 39
LINEAR = ("u", "r")
LOGS = ("log10_abs_u", "log10_abs_r", "log10_sqrt_vhat")
QUANTITIES = LINEAR + LOGS


def name_key(name: str) -> int:
    """A stable 64-bit integer of a tensor name (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


@dataclass
class Moments:
    """Count, mean and central moment sums M2..M4 (M_k = sum (x - mean)**k), in float64."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    m4: float = 0.0

    @classmethod
    def from_shifted_sums(
        cls, n: int, shift: float, s1: float, s2: float, s3: float, s4: float
    ) -> Moments:
        """From sums S_k = sum (x - shift)**k of n values; exact algebra, done in float64."""
        if n == 0:
            return cls()
        d = s1 / n
        m2 = max(s2 - s1 * d, 0.0)
        m3 = s3 - 3.0 * d * s2 + 2.0 * n * d**3
        m4 = max(s4 - 4.0 * d * s3 + 6.0 * d * d * s2 - 3.0 * n * d**4, 0.0)
        return cls(n, shift + d, m2, m3, m4)

    def merge(self, o: Moments) -> Moments:
        """Pebay's pairwise update (Chan et al. for M2)."""
        if o.n == 0:
            return replace(self)
        if self.n == 0:
            return replace(o)
        na, nb = float(self.n), float(o.n)
        n = na + nb
        delta = o.mean - self.mean
        d_n = delta / n
        mean = self.mean + d_n * nb
        m2 = self.m2 + o.m2 + delta * d_n * na * nb
        m3 = (
            self.m3
            + o.m3
            + delta * d_n * d_n * na * nb * (na - nb)
            + 3.0 * d_n * (na * o.m2 - nb * self.m2)
        )
        m4 = (
            self.m4
            + o.m4
            + delta * d_n**3 * na * nb * (na * na - na * nb + nb * nb)
            + 6.0 * d_n * d_n * (na * na * o.m2 + nb * nb * self.m2)
            + 4.0 * d_n * (na * o.m3 - nb * self.m3)
        )
        return Moments(self.n + o.n, mean, m2, m3, m4)

    @property
    def std(self) -> float:
        """Population standard deviation (ddof = 0)."""
        return math.sqrt(self.m2 / self.n) if self.n else math.nan

    @property
    def rms(self) -> float:
        return math.sqrt(self.m2 / self.n + self.mean**2) if self.n else math.nan

    def bimodality_coefficient(self) -> float:
        """Sarle's BC from size-corrected skewness G1 and excess kurtosis G2 (> 5/9: bimodal)."""
        n = float(self.n)
        if n < 4 or self.m2 <= 0.0:
            return math.nan
        g1 = math.sqrt(n) * self.m3 / self.m2**1.5
        g2 = n * self.m4 / self.m2**2 - 3.0
        skew = g1 * math.sqrt(n * (n - 1.0)) / (n - 2.0)
        kurt = (n - 1.0) / ((n - 2.0) * (n - 3.0)) * ((n + 1.0) * g2 + 6.0)
        return (skew * skew + 1.0) / (kurt + 3.0 * (n - 1.0) ** 2 / ((n - 2.0) * (n - 3.0)))


def _empty_hists(cfg: StatsConfig) -> dict[str, np.ndarray]:
    n_log = (LOG_HI - LOG_LO) * cfg.log_bins_per_decade
    out = {q: np.zeros(cfg.hist_bins + 2, np.int64) for q in LINEAR}
    out.update({q: np.zeros(n_log + 2, np.int64) for q in LOGS})
    return out


@dataclass(kw_only=True)
class TensorSketch:
    """Summary of u and r over one tensor, piece or layer. Build with `engine.summarize`."""

    name: str
    step: float
    hp: HyperParams
    cfg: StatsConfig
    half_width: float  # linear u/r histograms span [-half_width, half_width]
    numel: int = 0
    nonfinite: int = 0
    zero_v: int = 0
    below_eps: int = 0
    mu: Moments = field(default_factory=Moments)
    mr: Moments = field(default_factory=Moments)
    v_sum: float = 0.0  # sum of raw exp_avg_sq
    m_sq: float = 0.0  # sum of raw exp_avg**2
    vhat_sum: float = 0.0  # sum of v_hat = v / (1 - b2**t)
    u_min: float = math.inf
    u_max: float = -math.inf
    r_min: float = math.inf
    r_max: float = -math.inf
    hists: dict[str, np.ndarray] = field(default_factory=dict)
    # Uniform sample of coordinates: (global flat index, u, r); sorted by index for one tensor.
    sample_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sample_u: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    sample_r: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    # Layer sketches: each sample point's key in [0, 1) (see combine_layer); None on tensors.
    sample_key: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not self.hists:
            self.hists = _empty_hists(self.cfg)

    # ---- merging -------------------------------------------------------------------------------
    def merge(self, other: TensorSketch) -> TensorSketch:
        """The sketch of the union of two pieces of one tensor (same name, step, hyper-parameters).

        Raises:
            AdamscopeError: the pieces disagree on name, step or betas/eps.
        """
        key = (self.name, self.step, self.hp, self.cfg)
        if (other.name, other.step, other.hp, other.cfg) != key:
            raise AdamscopeError(
                f"{self.name}: cannot merge pieces with different name/step/hyper-parameters "
                f"({other.name}, step {other.step} vs {self.step})"
            )
        out = _combine([self, other], name=self.name)
        order = np.argsort(out.sample_idx, kind="stable")
        out.sample_idx, out.sample_u, out.sample_r = (
            out.sample_idx[order],
            out.sample_u[order],
            out.sample_r[order],
        )
        return out

    # ---- outputs -------------------------------------------------------------------------------
    def dip_sample(self) -> tuple[np.ndarray, np.ndarray]:
        """The (u, r) sample the dip is computed on: at most cfg.dip_sample points, uniform."""
        k = self.cfg.dip_sample
        if self.sample_u.size <= k:
            return self.sample_u, self.sample_r
        rng = np.random.default_rng([self.cfg.seed, name_key(self.name), 1])
        keep = _uniform_subset(rng, self.sample_u.size, k)
        return self.sample_u[keep], self.sample_r[keep]

    def edges(self, quantity: str) -> np.ndarray:
        """Inner bin edges of a histogram (the under/overflow bins lie outside them)."""
        if quantity in LINEAR:
            return np.linspace(-self.half_width, self.half_width, self.cfg.hist_bins + 1)
        n_log = (LOG_HI - LOG_LO) * self.cfg.log_bins_per_decade
        return LOG_LO + np.arange(n_log + 1) / self.cfg.log_bins_per_decade

    def histograms(self) -> list[tuple[str, float, float, int]]:
        """Non-empty bins as (quantity, lo, hi, count), counting values in [lo, hi).

        The underflow bin is (-inf, first edge), the overflow bin (last edge, inf); for the log10
        quantities the underflow bin (-inf, -45) holds exactly the zeros.
        """
        c = self.histogram_columns()
        cols = (c["quantity"], c["lo"].tolist(), c["hi"].tolist(), c["count"].tolist())
        return list(zip(*cols, strict=True))

    def histogram_columns(self) -> dict[str, Any]:
        """`histograms()` as columns: quantity (a list: polars converts numpy strings slowly), lo,
        hi and count (numpy arrays); no Python object per bin but the names."""
        names: list[str] = []
        lo, hi, count = [np.zeros(0)], [np.zeros(0)], [np.zeros(0, np.int64)]
        for q in QUANTITIES:
            counts = self.hists[q]
            nz = np.flatnonzero(counts)
            if not nz.size:
                continue
            e = self.edges(q)
            names.extend([q] * nz.size)
            lo.append(np.concatenate([[-np.inf], e])[nz])
            hi.append(np.concatenate([e, [np.inf]])[nz])
            count.append(counts[nz].astype(np.int64))
        return {
            "quantity": names,
            "lo": np.concatenate(lo),
            "hi": np.concatenate(hi),
            "count": np.concatenate(count),
        }

    # ---- transport -----------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """A plain dict (numbers, strings, numpy arrays) for pickling / torch.distributed."""
        state: dict[str, Any] = {
            k: getattr(self, k)
            for k in (
                "name",
                "step",
                "half_width",
                "numel",
                "nonfinite",
                "zero_v",
                "below_eps",
                "v_sum",
                "m_sq",
                "vhat_sum",
                "u_min",
                "u_max",
                "r_min",
                "r_max",
                "sample_idx",
                "sample_u",
                "sample_r",
            )
        }
        state["hp"] = asdict(self.hp)
        state["cfg"] = self.cfg.to_dict()
        state["mu"] = asdict(self.mu)
        state["mr"] = asdict(self.mr)
        state["hists"] = {q: h.copy() for q, h in self.hists.items()}
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TensorSketch:
        s = dict(state)
        cfg = dict(s.pop("cfg"))
        cfg["thresholds"] = StageThresholds(**cfg["thresholds"])
        return cls(
            hp=HyperParams(**s.pop("hp")),
            cfg=StatsConfig(**cfg),
            mu=Moments(**s.pop("mu")),
            mr=Moments(**s.pop("mr")),
            **s,
        )


def _uniform_subset(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """A uniformly random k-subset of range(n), as a boolean mask: drawn as the n - k points to
    drop when that is fewer (choosing without replacement costs in proportion to what is drawn)."""
    keep = np.zeros(n, bool)
    if k > n // 2:
        keep[:] = True
        keep[rng.choice(n, size=n - k, replace=False, shuffle=False)] = False
    else:
        keep[rng.choice(n, size=k, replace=False, shuffle=False)] = True
    return keep


def _rebin(counts: np.ndarray, src_half: float, dst_half: float) -> np.ndarray:
    """Move a linear histogram onto wider edges by bin centre (under/overflow stay put)."""
    nb = counts.size - 2
    out = np.zeros_like(counts)
    out[0], out[-1] = counts[0], counts[-1]
    centres = -src_half + (np.arange(nb) + 0.5) * (2 * src_half / nb)
    idx = np.clip(((centres + dst_half) / (2 * dst_half) * nb).astype(np.int64), 0, nb - 1)
    np.add.at(out, idx + 1, counts[1:-1])
    return out


def _combine(sketches: list[TensorSketch], *, name: str) -> TensorSketch:
    """Sum counts, merge moments and histograms, concatenate samples (caller re-samples)."""
    first = sketches[0]
    half = max(s.half_width for s in sketches)
    out = TensorSketch(name=name, step=first.step, hp=first.hp, cfg=first.cfg, half_width=half)
    for s in sketches:
        if (s.cfg.hist_bins, s.cfg.log_bins_per_decade) != (
            first.cfg.hist_bins,
            first.cfg.log_bins_per_decade,
        ):
            raise AdamscopeError(f"{s.name}: cannot merge sketches made with different bin counts")
        out.numel += s.numel
        out.nonfinite += s.nonfinite
        out.zero_v += s.zero_v
        out.below_eps += s.below_eps
        out.mu = out.mu.merge(s.mu)
        out.mr = out.mr.merge(s.mr)
        out.v_sum += s.v_sum
        out.m_sq += s.m_sq
        out.vhat_sum += s.vhat_sum
        out.u_min, out.u_max = min(out.u_min, s.u_min), max(out.u_max, s.u_max)
        out.r_min, out.r_max = min(out.r_min, s.r_min), max(out.r_max, s.r_max)
        for q in QUANTITIES:
            h = s.hists[q]
            if q in LINEAR and s.half_width != half:
                h = _rebin(h, s.half_width, half)
            out.hists[q] = out.hists[q] + h
    out.sample_idx = np.concatenate([s.sample_idx for s in sketches])
    out.sample_u = np.concatenate([s.sample_u for s in sketches])
    out.sample_r = np.concatenate([s.sample_r for s in sketches])
    return out


def combine_layer(sketches: list[TensorSketch], *, name: str | None = None) -> TensorSketch:
    """A layer's sketch: merged counts and moments, and a uniform sample of the layer's
    coordinates of at most dip_sample points, whatever the order (or grouping) of the merges.

    Every sampled coordinate gets a key: a tensor kept each coordinate with probability
    p = min(1, dip_sample / numel), and a kept coordinate's key is p times a uniform number
    hashed from (seed, tensor name, flat index), so the keys are those of "keep where a uniform
    key < p". The layer keeps the dip_sample smallest keys of its tensors' samples (a bottom-k
    sample): a uniform sample of the union, so the dip weighs coordinates equally, and merging
    in any order or grouping gives the same points.
    """
    if not sketches:
        raise ValueError("combine_layer needs at least one sketch")
    sketches = sorted(sketches, key=lambda s: s.name)  # moments: the same rounding every time
    label = name if name is not None else sketches[0].name
    out = _combine(sketches, name=label)
    k = sketches[0].cfg.dip_sample
    keys = []
    for s in sketches:
        if s.sample_key is not None:
            keys.append(s.sample_key)
        else:
            p = min(1.0, k / max(s.numel, 1))
            keys.append(p * _hash_uniform(s.cfg.seed, name_key(s.name), s.sample_idx))
    key = np.concatenate(keys)
    u, r = out.sample_u, out.sample_r
    if key.size > k:  # the same points whatever the merge order (their order differs: the dip
        keep = np.argpartition(key, k - 1)[:k]  # does not look at it)
        key, u, r = key[keep], u[keep], r[keep]
    out.sample_key, out.sample_u, out.sample_r = key, u, r
    out.sample_idx = np.full(key.size, -1, np.int64)
    return out


def _hash_uniform(seed: int, key: int, idx: np.ndarray) -> np.ndarray:
    """Uniform numbers in [0, 1) from (seed, key, index) by SplitMix64's finaliser."""
    with np.errstate(over="ignore"):
        x = idx.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x ^= np.uint64(key & 0xFFFFFFFFFFFFFFFF) ^ np.uint64((seed * 0xD1B54A32D192ED03) % 2**64)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53
