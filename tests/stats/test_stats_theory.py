"""THEORY.md's reference numbers, reproduced from live torch.optim.Adam runs (200k coordinates, 300
steps, betas (0.9, 0.95), eps 1e-8, gradients g = scale (rho b1 + b2), b ~ +-1)."""

from __future__ import annotations

import math

import diptest
import numpy as np
import pytest
from _stats_helpers import adam_run, full_r, sketch_of

from adamscope.config import StatsConfig
from adamscope.stats.sketch import TensorSketch
from adamscope.tables.rows import stats_row


def _modes(sk: TensorSketch) -> tuple[float, float]:
    """Centres of the fullest r-histogram bin on each side of 0."""
    h = sk.hists["r"][1:-1]
    e = sk.edges("r")
    c = (e[:-1] + e[1:]) / 2
    neg, pos = c < 0, c > 0
    return float(c[neg][np.argmax(h[neg])]), float(c[pos][np.argmax(h[pos])])


def test_uncorrelated_gradients_give_std_r_of_0_247() -> None:
    m, v, t, hp = adam_run(0.1, 1.0)
    row = stats_row(sketch_of(m, v, hp, t))
    # THEORY: 0.247 measured; sqrt(Gamma1^2 + rho^2)/sqrt(1 + rho^2), Gamma1^2 = (1-b1)/(1+b1)
    predicted = math.sqrt(0.1 / 1.9 + 0.01) / math.sqrt(1.01)
    assert row["r_std"] == pytest.approx(0.247, rel=0.02)
    assert row["r_std"] == pytest.approx(predicted, rel=0.02)
    assert row["u_std"] == pytest.approx(row["r_std"], rel=1e-3)
    assert row["dip_r"] < 0.005 and row["stage"] == "healthy"


def test_correlated_gradients_put_the_modes_at_plus_minus_one() -> None:
    m, v, t, hp = adam_run(10.0, 1.0)
    sk = sketch_of(m, v, hp, t)
    lo, hi = _modes(sk)
    assert lo == pytest.approx(-1.0, rel=0.02) and hi == pytest.approx(1.0, rel=0.02)
    row = stats_row(sk)
    assert row["r_std"] == pytest.approx(0.995, rel=0.02)
    assert row["dip_r"] == pytest.approx(0.241, abs=0.01)
    assert abs(row["dip_r"] - diptest.dipstat(full_r(m, v, hp, t))) < 0.005
    # the theory's table says unstable; one checkpoint with no vanishing/primed before it cannot
    # tell that from sign-descent-like healthy training (docs/stages.md): the verdict says so
    assert row["stage_snapshot"] == "unstable"
    assert row["stage"] == "correlated"


def test_paper_convention_puts_the_modes_at_b1_over_sqrt_b2() -> None:
    m, v, t, hp = adam_run(10.0, 1.0)
    sk = sketch_of(m, v, hp, t, cfg=StatsConfig(device="cpu", convention="paper"))
    target = 0.9 / math.sqrt(0.95)
    lo, hi = _modes(sk)
    assert lo == pytest.approx(-target, rel=0.02) and hi == pytest.approx(target, rel=0.02)
    torch_row = stats_row(sketch_of(m, v, hp, t))
    row = stats_row(sk)
    assert row["r_std"] == pytest.approx(torch_row["r_std"] * target, rel=1e-6)
    assert row["dip_r"] == pytest.approx(torch_row["dip_r"], abs=1e-6)  # the dip is scale-free


def test_tiny_correlated_gradients_are_primed() -> None:
    m, v, t, hp = adam_run(10.0, 1e-10)
    row = stats_row(sketch_of(m, v, hp, t))
    assert row["u_std"] == pytest.approx(0.091, rel=0.03)
    assert row["r_std"] == pytest.approx(0.995, rel=0.02)
    assert row["frac_below_eps"] == 1.0
    assert row["stage"] == "primed"


def test_unimodal_sample_dip_is_close_to_full_dip() -> None:
    m, v, t, hp = adam_run(0.1, 1e-10)
    row = stats_row(sketch_of(m, v, hp, t))
    assert abs(row["dip_r"] - diptest.dipstat(full_r(m, v, hp, t))) < 0.005
    assert row["u_std"] == pytest.approx(0.0025, rel=0.05)
    assert row["stage"] == "vanishing"


@pytest.mark.parametrize(("rho", "steps"), [(0.1, 300), (1.0, 300), (10.0, 300), (1.0, 40)])
def test_rho_hat_recovers_the_gradients_time_correlation(rho: float, steps: int) -> None:
    """Issue 13: rho_hat on live torch Adam state of the paper's Section 4.2 model, through the
    engine and the row builder, within 20% of the true rho (at the checkpoint's own step)."""
    m, v, t, hp = adam_run(rho, 1.0, n=50_000, steps=steps)
    row = stats_row(sketch_of(m, v, hp, t))
    assert row["rho_hat"] == pytest.approx(rho, rel=0.2)
    assert row["rho_lo"] <= row["rho_hat"] <= row["rho_hi"]
    assert row["null_r_std"] == pytest.approx(0.226, abs=0.01 if steps > 100 else 0.05)
