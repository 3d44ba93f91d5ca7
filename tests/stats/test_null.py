"""The null model of r (adamscope.stats.null) against independent references: THEORY.md's null table,
a plain numpy EMA simulation, brute-force dip replicates and real torch.optim.Adam runs."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy.stats import ks_2samp

from adamscope.errors import AdamscopeError
from adamscope.stats import null
from adamscope.stats.bimodality import dip

B = (0.9, 0.95)

# THEORY.md, "The null: r when gradients are independent across steps": numpy, 20,000 coordinates,
# (0.9, 0.95), bias-corrected; (std(r), dip) per family. Tolerances: std within 2% (the table's
# Monte Carlo error is ~0.5%); a dip must be one the null could give (p > 0.01).
THEORY_NULL = {
    1: {"gaussian": (1.000, 0.249), "rademacher": (1.000, 0.249), "student_t3": (1.000, 0.249)},
    2: {"gaussian": (0.710, 0.063), "rademacher": (0.710, 0.127), "student_t3": (0.708, 0.065)},
    3: {"gaussian": (0.581, 0.0038), "rademacher": (0.582, 0.147), "student_t3": (0.577, 0.016)},
    5: {"gaussian": (0.452, 0.0017), "rademacher": (0.456, 0.058), "student_t3": (0.450, 0.0039)},
    10: {"gaussian": (0.326, 0.0014), "rademacher": (0.329, 0.0034), "student_t3": (0.327, 0.0014)},
    20: {"gaussian": (0.257, 0.0015), "rademacher": (0.260, 0.0020), "student_t3": (0.256, 0.0014)},
    40: {"gaussian": (0.230, 0.0011), "rademacher": (0.231, 0.0017), "student_t3": (0.226, 0.0011)},
    400: {
        "gaussian": (0.226, 0.0012),
        "rademacher": (0.230, 0.0012),
        "student_t3": (0.217, 0.0013),
    },
}


def brute_r(family: str, b1: float, b2: float, t: int, n: int, seed: int) -> np.ndarray:
    """r after t Adam steps by the plain EMA recursion, torch convention, bias-corrected."""
    rng = np.random.default_rng(seed)
    m = np.zeros(n)
    v = np.zeros(n)
    for _ in range(t):
        if family == "gaussian":
            g = rng.standard_normal(n)
        elif family == "rademacher":
            g = rng.integers(0, 2, n) * 2.0 - 1.0
        else:
            g = rng.standard_t(3, n)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
    return (m / (1 - b1**t)) / np.sqrt(v / (1 - b2**t))


@pytest.mark.parametrize("t", sorted(THEORY_NULL))
def test_theory_null_table(t: int) -> None:
    model = null.null_stats(*B, t, 20_000)
    for family, (std, d) in THEORY_NULL[t].items():
        assert model.r_std_by_family[family] == pytest.approx(std, rel=0.02), family
        # a healthy run must never be called bimodal: the table's own dips are null dips
        assert model.p_value(d) > 0.01, (family, d)
    assert model.r_std == model.r_std_by_family["gaussian"]
    # the envelope follows the most bimodal family: +-1 gradients at t = 3 (0.147)
    if t == 3:
        assert model.dip_q[0.5] == pytest.approx(0.147, abs=0.01)
        assert not model.unimodal
    if t >= 20:
        assert model.unimodal


def test_exact_std_of_r() -> None:
    # t = 1: r = +-1 exactly whatever g; +-1 gradients: sum a^2 / sum c in closed form
    for family in null.FAMILIES:
        r = null.null_r(*B, 1, family=family, n=1000)
        assert np.allclose(np.abs(r), 1.0, atol=1e-6)
    t = 7
    sum_a2 = 0.01 * (1 - 0.81**t) / (1 - 0.81) / (1 - 0.9**t) ** 2
    rad = null.null_stats(*B, t, 4096).r_std_by_family["rademacher"]
    assert rad == pytest.approx(math.sqrt(sum_a2), rel=1e-9)
    # steady state, b2 -> 1: v concentrates and std(r) -> Gamma1 = sqrt((1-b1)/(1+b1))
    g = null.null_stats(0.9, 0.99999, 10**7, 4096).r_std
    assert g == pytest.approx(math.sqrt(0.1 / 1.9), rel=0.01)


@pytest.mark.parametrize("betas,t", [((0.9, 0.95), 3), ((0.9, 0.95), 300), ((0.9, 0.999), 300)])
def test_gaussian_quadrature_matches_monte_carlo(betas: tuple[float, float], t: int) -> None:
    # the exact E[r^2] (a 1-D integral) against the sampler, whose old lags come from a Gamma
    r = null.null_r(*betas, t, family="gaussian", n=2**17, seed=3)
    assert float(np.sqrt(np.mean(r.astype(np.float64) ** 2))) == pytest.approx(
        null.null_stats(*betas, t, 4096).r_std, rel=0.008
    )


@pytest.mark.parametrize("family", null.FAMILIES)
def test_sampler_matches_plain_numpy_ema(family: str) -> None:
    # (0.9, 0.999) at t = 200: m's tail is a normal, v's old lags are drawn without columns
    # (Gamma / exact / t3 exceedances); the law of r must match the plain recursion
    brute = brute_r(family, 0.9, 0.999, 200, 20_000, seed=11)
    ours = null.null_r(0.9, 0.999, 200, family=family, n=65_536, seed=5)
    assert ks_2samp(brute, ours).statistic < 0.02
    assert float(np.std(ours)) == pytest.approx(float(np.std(brute)), rel=0.02)


@pytest.mark.parametrize(
    "family,t,n,reps",
    [("rademacher", 12, 65_536, 40), ("gaussian", 3, 16_384, 60), ("rademacher", 8, 2048, 80)],
)
def test_dip_null_against_brute_force(family: str, t: int, n: int, reps: int) -> None:
    # the shortcut (location fitted over subsample sizes + spread scaled from 2048 points) vs
    # dips of fresh n-point samples; (0.9, 0.95) at the edge of bimodality
    brute = np.array([dip(brute_r(family, *B, t, n, seed=100 + k))[0] for k in range(reps)])
    model = null.null_stats(*B, t, n)
    reps_f = model.replicates[family]
    assert abs(float(np.median(reps_f)) - float(np.median(brute))) < 0.1 * np.median(brute) + 2e-4
    assert float(np.quantile(reps_f, 0.99)) >= float(np.quantile(brute, 0.9))  # conservative
    assert float(np.quantile(reps_f, 0.99)) <= float(brute.max()) * 1.5  # but not absurdly


def test_judge_from_step() -> None:
    big = null.judge_from_step(*B, n_sample=65_536)
    small = null.judge_from_step(*B, n_sample=1000)
    assert 10 <= big <= 20 and 5 <= small <= big
    assert null.judge_from_step(*B, n_sample=65_536, bias_correction=False) == big  # scale-free
    assert null.null_stats(*B, big, 65_536).unimodal
    assert not null.null_stats(*B, big - 3, 65_536).unimodal
    # +-1 gradients with b1 < 0.5: r is Cantor-like for ever
    assert null.judge_from_step(0.3, 0.95, n_sample=65_536) == null.NEVER


def test_p_values() -> None:
    early, late = null.null_stats(*B, 1, 65_536), null.null_stats(*B, 5000, 65_536)
    assert early.p_value(0.25) > 0.05  # +-1 exactly at t = 1: the dip of two spikes is the null
    assert late.p_value(0.25) < 1e-6  # ... but not at t = 5000
    assert late.unimodal and late.dip_q[0.99] < late.dip_ref_q[0.99]
    for d in (0.0005, 0.002, 0.004, 0.01):  # a unimodal null leaves diptest's p-value as it is
        assert late.p_value(d) == pytest.approx(null._diptest_p(d, 65_536), abs=1.5 / 129)
    mid = null.null_stats(*B, 3, 65_536)  # bimodal null: empirical, resolved to 1/(R + 1)
    assert mid.p_value(1.0) == pytest.approx(1.0 / 129.0)
    assert math.isnan(late.p_value(math.nan))


def test_monotone() -> None:
    stds = [null.null_stats(*B, t, 4096).r_std for t in (1, 2, 3, 5, 10, 20, 40, 400)]
    assert bool(np.all(np.diff(stds) < 0))
    q99 = [null.null_stats(*B, 5000, n).dip_q[0.99] for n in (1000, 4096, 65_536)]
    assert q99[0] > q99[1] > q99[2]
    xs = np.linspace(0.2, 0.999, 40)
    rhos = [null.rho_hat(float(x), *B, 300, numel=10**6)[0] for x in xs]
    assert bool(np.all(np.diff(rhos) >= 0))
    assert rhos[0] == 0.0  # below the null's RMS
    assert null.rho_hat(1.0, *B, 300, numel=10**6)[0] == math.inf  # the rho -> inf limit
    assert null.rho_hat(1.0, *B, 20, numel=10**6)[0] == math.inf  # 1 at every step (torch)


def test_conventions_and_bias_correction() -> None:
    t = 5
    r = null.null_r(*B, t, family="gaussian", n=10_000, seed=1)
    paper = null.null_r(*B, t, family="gaussian", n=10_000, seed=1, convention="paper")
    raw = null.null_r(*B, t, family="gaussian", n=10_000, seed=1, bias_correction=False)
    assert np.allclose(paper, r * B[0] / math.sqrt(B[1]), rtol=1e-6)
    kappa = math.sqrt(1 - B[1] ** t) / (1 - B[0] ** t)  # 0.53: r is strongly scaled early
    assert np.allclose(raw, r / kappa, rtol=1e-6)
    m_torch = null.null_stats(*B, t, 4096)
    m_paper = null.null_stats(*B, t, 4096, convention="paper")
    m_raw = null.null_stats(*B, t, 4096, bias_correction=False)
    assert m_paper.r_std == pytest.approx(m_torch.r_std * B[0] / math.sqrt(B[1]), rel=1e-12)
    assert m_raw.r_std == pytest.approx(m_torch.r_std / kappa, rel=1e-12)
    assert m_paper.dip_q == m_torch.dip_q == m_raw.dip_q  # the dip is scale-free


RHOS = (0.0, 0.1, 1.0, 10.0)


@pytest.fixture(scope="module")
def adam_rms() -> dict[tuple[float, int], tuple[float, float]]:
    """Real torch.optim.Adam on g = rho c + e (c, e ~ +-1, c fixed per coordinate), 50,000
    coordinates per rho in one parameter, eps and lr tiny: {(rho, t): (RMS of r, RMS of the raw
    m/sqrt(v))} at t = 3, 20, 50, 300."""
    import torch

    n, steps = 50_000, (3, 20, 50, 300)
    gen = torch.Generator().manual_seed(7)
    p = torch.nn.Parameter(torch.zeros(n * len(RHOS)))
    opt = torch.optim.Adam([p], lr=1e-12, betas=B, eps=1e-30)
    rho = torch.tensor(RHOS).repeat_interleave(n)
    c = torch.randint(0, 2, p.shape, generator=gen).float() * 2 - 1
    out = {}
    for t in range(1, max(steps) + 1):
        p.grad = rho * c + torch.randint(0, 2, p.shape, generator=gen).float() * 2 - 1
        opt.step()
        if t in steps:
            m, v = opt.state[p]["exp_avg"].double(), opt.state[p]["exp_avg_sq"].double()
            r = (m / (1 - B[0] ** t)) / (v.sqrt() / math.sqrt(1 - B[1] ** t))
            raw = m / v.sqrt()
            r[v == 0], raw[v == 0] = 0.0, 0.0  # g = rho c + e is 0 half the time at rho = 1
            for k, x in enumerate(RHOS):
                blk = slice(k * n, (k + 1) * n)
                out[(x, t)] = (
                    float(r[blk].pow(2).mean().sqrt()),
                    float(raw[blk].pow(2).mean().sqrt()),
                )
    return out


@pytest.mark.parametrize("rho", [0.1, 1.0, 10.0])
def test_rho_hat_recovers_rho_from_real_adam(rho: float, adam_rms: dict) -> None:
    for t in (20, 50, 300):  # the inversion uses the checkpoint's own step
        rms, raw = adam_rms[(rho, t)]
        est, lo, hi = null.rho_hat(rms, *B, t, numel=50_000)
        assert est == pytest.approx(rho, rel=0.2), t
        assert lo <= est <= hi and lo <= rho <= hi
        paper = null.rho_hat(rms * B[0] / math.sqrt(B[1]), *B, t, numel=50_000, convention="paper")
        assert paper[0] == pytest.approx(est, rel=1e-9)
        no_bc = null.rho_hat(raw, *B, t, numel=50_000, bias_correction=False)
        assert no_bc[0] == pytest.approx(est, rel=1e-6)


def test_real_adam_null_std(adam_rms: dict) -> None:
    # rho = 0: independent +-1 gradients through torch.optim.Adam give the null's std of r
    for t in (3, 20, 50, 300):
        rms = adam_rms[(0.0, t)][0]
        assert rms == pytest.approx(
            null.null_stats(*B, t, 4096).r_std_by_family["rademacher"], rel=0.01
        )
        est, lo, _ = null.rho_hat(rms, *B, t, numel=50_000)
        assert lo == 0.0 and est < 0.1, t


def test_rho_hat_theory_reference_points() -> None:
    # THEORY.md, Section 4.2 table (real Adam, 200k coordinates, t = 300)
    for rms, rho in ((0.247, 0.1), (0.711, 1.0), (0.995, 10.0)):
        assert null.rho_hat(rms, *B, 300, numel=200_000)[0] == pytest.approx(rho, rel=0.15)


def test_deterministic_across_processes() -> None:
    code = (
        "from adamscope.stats import null; m = null.null_stats(0.9, 0.95, 6, 3000);"
        "print(repr(m.dip_q), repr(m.r_std_by_family['student_t3']))"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    here = null.null_stats(0.9, 0.95, 6, 3000)
    assert runs[0].stdout == runs[1].stdout
    assert runs[0].stdout.split()[-1] == repr(here.r_std_by_family["student_t3"])
    a = null.null_r(*B, 9, family="student_t3", n=5000, seed=4)
    assert np.array_equal(a, null.null_r(*B, 9, family="student_t3", n=5000, seed=4))


def test_cached_calls_are_fast() -> None:
    null.null_stats(*B, 5000, 65_536)
    null.judge_from_step(*B, n_sample=65_536)
    null.rho_hat(0.5, *B, 5000, numel=10**6)
    t0 = time.perf_counter()
    for _ in range(200):
        null.null_stats(*B, 5000, 65_536)
        null.judge_from_step(*B, n_sample=65_536)
    per_call = (time.perf_counter() - t0) / 400
    assert per_call < 2e-4
    t0 = time.perf_counter()
    for _ in range(200):
        null.rho_hat(0.5, *B, 5000, numel=10**6)
    assert (time.perf_counter() - t0) / 200 < 1e-3


def test_bad_input_is_reported() -> None:
    with pytest.raises(AdamscopeError, match="betas"):
        null.null_stats(1.0, 0.95, 10, 1000)
    with pytest.raises(AdamscopeError, match="step"):
        null.null_stats(0.9, 0.95, 0, 1000)
    with pytest.raises(AdamscopeError, match="n_sample"):
        null.judge_from_step(0.9, 0.95, n_sample=3)
    with pytest.raises(AdamscopeError, match="convention"):
        null.null_stats(0.9, 0.95, 10, 1000, convention="jax")
    with pytest.raises(AdamscopeError, match="family"):
        null.null_r(0.9, 0.95, 10, family="cauchy")  # type: ignore[arg-type]
    with pytest.raises(AdamscopeError, match="alpha"):
        null.judge_from_step(0.9, 0.95, n_sample=1000, alpha=0.0)
