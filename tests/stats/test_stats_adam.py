"""u, r and the |r| bound against torch.optim.Adam itself and float64 numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adamscope.errors import AdamscopeError
from adamscope.stats.adam import coefficients, ratio_bound, update_and_ratio
from adamscope.vocab import HyperParams

B = (0.9, 0.95)


def test_steady_state_bound_matches_theory_closed_form() -> None:
    # THEORY.md: (1-b1)/sqrt((1-b2)(1-b1^2/b2)) ~ 1.17 for (0.9, 0.95), ~7.3 for (0.9, 0.999)
    for b1, b2, approx in [(0.9, 0.95, 1.17), (0.9, 0.999, 7.3)]:  # rounded
        closed = (1 - b1) / math.sqrt((1 - b2) * (1 - b1 * b1 / b2))
        assert ratio_bound(b1, b2, math.inf) == pytest.approx(closed, rel=1e-12)
        assert ratio_bound(b1, b2, math.inf) == pytest.approx(approx, abs=0.05)
        # bias-corrected bound converges to the same value
        assert ratio_bound(b1, b2, 1e6) == pytest.approx(closed, rel=1e-9)
    assert ratio_bound(0.9, 0.95, 1) == pytest.approx(1.0, rel=1e-12)  # r = +-1 after one step
    assert ratio_bound(0.9, 0.95, 1, convention="paper") == pytest.approx(0.9 / math.sqrt(0.95))


def _adam_on(grads: list[torch.Tensor], betas: tuple[float, float], **kw: float) -> dict:
    p = torch.nn.Parameter(torch.zeros(grads[0].numel()))
    opt = torch.optim.Adam([p], lr=1e-3, betas=betas, **kw)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return opt.state[p]


@pytest.mark.parametrize("betas, t", [((0.9, 0.95), 40), ((0.9, 0.999), 25), ((0.99, 0.9), 30)])
def test_bound_is_attained_by_the_worst_gradient_sequence(
    betas: tuple[float, float], t: int
) -> None:
    # Cauchy-Schwarz is tight for g_s proportional to w1_s / w2_s = (b1/b2)^(t-s) (times a constant)
    b1, b2 = betas
    grads = [torch.tensor([(b1 / b2) ** (t - s), -((b1 / b2) ** (t - s))]) for s in range(1, t + 1)]
    st = _adam_on(grads, betas, eps=0.0)
    hp = HyperParams(beta1=b1, beta2=b2, eps=0.0)
    k = coefficients(hp, float(st["step"]))
    _, r = update_and_ratio(st["exp_avg"], st["exp_avg_sq"], k)
    assert r[0].item() == pytest.approx(k.bound, rel=1e-5)
    assert r[1].item() == pytest.approx(-k.bound, rel=1e-5)
    # ... and random sequences stay inside it
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(5000, generator=gen) * torch.rand(1, generator=gen) for _ in range(t)]
    st = _adam_on(grads, betas, eps=0.0)
    _, r = update_and_ratio(st["exp_avg"], st["exp_avg_sq"], k)
    assert r.abs().max().item() <= k.bound * (1 + 1e-6)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_u_is_the_update_torch_applies(amsgrad: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    n, lr = 10_000, 1e-2
    p = torch.nn.Parameter(torch.zeros(n))
    opt = torch.optim.Adam([p], lr=lr, betas=B, eps=1e-3, amsgrad=amsgrad)
    for _ in range(7):
        p.grad = torch.randn(n, generator=gen) * torch.rand(n, generator=gen) * 1e-3
        opt.step()
    # one more step from p = 0: p becomes exactly -lr * update
    p.grad = torch.randn(n, generator=gen) * 1e-3
    with torch.no_grad():
        p.zero_()
    opt.step()
    st = opt.state[p]
    hp = HyperParams(beta1=B[0], beta2=B[1], eps=1e-3, amsgrad=amsgrad)
    k = coefficients(hp, float(st["step"]))
    vd = st["max_exp_avg_sq"] if amsgrad else st["exp_avg_sq"]
    u, _ = update_and_ratio(st["exp_avg"], vd, k)
    applied = -p.detach() / lr
    assert torch.allclose(u, applied, rtol=2e-6, atol=0)


def _numpy_ur(m, v, *, b1, b2, t, eps, bc=True, inside=False, paper=False):
    m, v = m.astype(np.float64), v.astype(np.float64)
    mh = m / (1 - b1**t) if bc else m
    vh = v / (1 - b2**t) if bc else v
    if paper:
        mh, vh = b1 * mh, b2 * vh
    u = mh / (np.sqrt(vh + eps) if inside else np.sqrt(vh) + eps)
    r = np.where(v == 0, 0.0, mh / np.sqrt(np.where(v == 0, 1.0, vh)))
    return u, r


@pytest.mark.parametrize(
    "bc, inside, paper",
    [
        (True, False, False),
        (False, False, False),
        (True, True, False),
        (True, False, True),
        (False, True, True),
    ],
)
def test_update_and_ratio_conventions(bc: bool, inside: bool, paper: bool) -> None:
    gen = torch.Generator().manual_seed(2)
    m = torch.randn(4000, generator=gen) * 1e-4
    v = m * m * 2 + torch.rand(4000, generator=gen) * 1e-8
    v[:10] = 0.0
    m[:10] = 0.0
    hp = HyperParams(beta1=0.9, beta2=0.99, eps=1e-6, bias_correction=bc, eps_inside_sqrt=inside)
    k = coefficients(hp, 17.0, convention="paper" if paper else "torch")
    u, r = update_and_ratio(m, v, k)
    ru, rr = _numpy_ur(
        m.numpy(), v.numpy(), b1=0.9, b2=0.99, t=17.0, eps=1e-6, bc=bc, inside=inside, paper=paper
    )
    np.testing.assert_allclose(u.numpy(), ru, rtol=2e-6, atol=1e-30)
    np.testing.assert_allclose(r.numpy(), rr, rtol=2e-6, atol=1e-30)
    assert (r[:10] == 0).all()


def test_paper_convention_scales_r_by_b1_over_sqrt_b2() -> None:
    m = torch.tensor([0.3, -0.2])
    v = torch.tensor([0.1, 0.05])
    hp = HyperParams(beta1=0.9, beta2=0.95, eps=0.0)
    _, r_t = update_and_ratio(m, v, coefficients(hp, 50.0))
    _, r_p = update_and_ratio(m, v, coefficients(hp, 50.0, convention="paper"))
    assert torch.allclose(r_p, r_t * (0.9 / math.sqrt(0.95)), rtol=1e-6)


@pytest.mark.parametrize(
    "hp, step",
    [
        (HyperParams(beta1=0.9, beta2=0.95, eps=1e-8), 0.0),
        (HyperParams(beta1=1.0, beta2=0.95, eps=1e-8), 5.0),
        (HyperParams(beta1=0.9, beta2=1.0, eps=1e-8), 5.0),
        (HyperParams(beta1=0.9, beta2=0.95, eps=-1.0), 5.0),
    ],
)
def test_invalid_hyper_parameters_raise_one_line(hp: HyperParams, step: float) -> None:
    with pytest.raises(AdamscopeError, match="^layer.w: "):
        coefficients(hp, step, name="layer.w")


def test_no_bias_correction_without_step_uses_steady_state_bound() -> None:
    hp = HyperParams(beta1=0.9, beta2=0.95, eps=1e-8, bias_correction=False)
    k = coefficients(hp, 0.0)
    assert k.bound == pytest.approx(ratio_bound(0.9, 0.95, math.inf))
    assert (k.bc1, k.bc2) == (1.0, 1.0)
