"""Adam's update u and ratio r from stored state, in torch's order of operations; the |r| bound.

torch convention (the default, what torch.optim.Adam/AdamW apply):
    m_hat = m / (1 - b1**t),  denom = sqrt(v) / sqrt(1 - b2**t) + eps
    u = m_hat / denom,        r = m_hat / (sqrt(v) / sqrt(1 - b2**t))   (r = 0 where v == 0)
paper convention (Molybog et al.; EMA weights summing to b1 and b2):
    m' = b1 * m_hat,  v' = b2 * v_hat,  u = m' / (sqrt(v') + eps),  r = m' / sqrt(v')
AMSGrad replaces v by max_exp_avg_sq in the denominator; `eps_inside_sqrt` uses sqrt(v_hat + eps);
`bias_correction=False` drops both bias corrections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from adamscope.config import Convention
from adamscope.errors import AdamscopeError
from adamscope.vocab import HyperParams

if TYPE_CHECKING:
    import torch

# Linear histograms of u and r span +-bound * (1 + HIST_PAD): at t = 1 every |r| equals the bound
# exactly, and float32 rounding may put a value a few ulps above it.
HIST_PAD = 1e-3
_BOUND_CAP = 1e30  # b1**2 > b2 makes the bound grow like (b1**2/b2)**(t/2): keep it finite


@dataclass(frozen=True, kw_only=True)
class AdamCoefficients:
    """The scalars u and r need for one tensor: bias corrections, eps and the convention."""

    convention: Convention
    beta1: float
    beta2: float
    eps: float
    bias_correction: bool
    eps_inside_sqrt: bool
    bc1: float  # 1 - b1**t (1 without bias correction)
    bc2: float  # 1 - b2**t
    sqrt_bc2: float  # bc2 ** 0.5, as torch computes it
    bound: float  # the exact bound on |r| for this (b1, b2, t)

    @property
    def hist_range(self) -> float:
        """Half-width of the linear u and r histograms."""
        return self.bound * (1.0 + HIST_PAD)


def has_negative(x: torch.Tensor) -> bool:
    """Whether a tensor holds a negative entry: its min (a SIMD reduction, ~10x cheaper than
    `(x < 0).any()`), and the elementwise test only when the min is NaN (NaN hides a negative)."""
    if not x.numel():
        return False
    low = float(x.min())
    if low != low:
        return bool((x < 0).any())
    return low < 0


def ratio_bound(
    beta1: float,
    beta2: float,
    step: float,
    *,
    bias_correction: bool = True,
    convention: Convention = "torch",
) -> float:
    """The largest |r| any gradient sequence can produce after `step` Adam steps (also bounds |u|).

    By Cauchy-Schwarz, |sum_k w1_k g_k| <= sqrt(sum_k w1_k**2 / w2_k) * sqrt(sum_k w2_k g_k**2)
    with the EMA weights w1_k = (1-b1) b1**k and w2_k = (1-b2) b2**k, k < t; so
    |m| / sqrt(v) <= (1-b1)/sqrt(1-b2) * sqrt(sum_{k<t} q**k), q = b1**2/b2. Bias correction
    multiplies r by sqrt(1-b2**t)/(1-b1**t), the paper convention by b1/sqrt(b2). `step` = inf gives
    the steady state (1-b1)/sqrt((1-b2)(1-q)) for q < 1 (1.165 for (0.9, 0.95), 7.27 for 0.999).

    Args:
        beta1, beta2: Adam's betas, 0 <= beta1 < 1, 0 < beta2 < 1.
        step: t >= 1 (the stored, already incremented step), or math.inf.
    Returns:
        The bound (capped at 1e30 when b1**2 > b2 and t is huge).
    """
    q = beta1 * beta1 / beta2
    t = step
    if q == 0.0:
        geo = 1.0
    elif q == 1.0:
        geo = t
    elif math.isinf(t):
        geo = 1.0 / (1.0 - q) if q < 1.0 else math.inf
    elif q < 1.0:
        geo = -math.expm1(t * math.log(q)) / (1.0 - q)
    else:
        x = t * math.log(q)
        geo = math.expm1(x) / (q - 1.0) if x < 700.0 else math.inf
    bound = (1.0 - beta1) / math.sqrt(1.0 - beta2) * math.sqrt(geo)
    if bias_correction and not math.isinf(t):
        bc1 = -math.expm1(t * math.log(beta1)) if beta1 > 0.0 else 1.0
        bc2 = -math.expm1(t * math.log(beta2))
        bound *= math.sqrt(bc2) / bc1
    if convention == "paper":
        bound *= beta1 / math.sqrt(beta2)
    return min(bound, _BOUND_CAP) if math.isfinite(bound) else _BOUND_CAP


def coefficients(
    hp: HyperParams, step: float, *, convention: Convention = "torch", name: str = "?"
) -> AdamCoefficients:
    """Check the hyper-parameters of tensor `name` and precompute what u and r need.

    Raises:
        AdamscopeError: betas outside [0, 1) / (0, 1), bad eps, or step < 1 with bias correction.
    """
    b1, b2, eps = float(hp.beta1), float(hp.beta2), float(hp.eps)
    if not (0.0 <= b1 < 1.0 and 0.0 < b2 < 1.0):
        raise AdamscopeError(f"{name}: betas ({b1}, {b2}) are outside [0, 1) x (0, 1)")
    if not (eps >= 0.0 and math.isfinite(eps)):
        raise AdamscopeError(f"{name}: eps = {eps} is not a finite, non-negative number")
    if convention not in ("torch", "paper"):
        raise AdamscopeError(f"unknown convention {convention!r}: use 'torch' or 'paper'")
    t = float(step)
    if hp.bias_correction:
        if not t >= 1.0:
            raise AdamscopeError(
                f"{name}: step = {step} < 1 leaves bias correction undefined (was it ever stepped?)"
            )
        bc1 = 1.0 - b1**t
        bc2 = 1.0 - b2**t
    else:
        bc1 = bc2 = 1.0
        if not t >= 1.0:
            t = math.inf  # step unknown: the steady-state bound holds for every t
    return AdamCoefficients(
        convention=convention,
        beta1=b1,
        beta2=b2,
        eps=eps,
        bias_correction=bool(hp.bias_correction),
        eps_inside_sqrt=bool(hp.eps_inside_sqrt),
        bc1=bc1,
        bc2=bc2,
        sqrt_bc2=bc2**0.5,
        bound=ratio_bound(
            b1, b2, t, bias_correction=bool(hp.bias_correction), convention=convention
        ),
    )


def update_and_ratio_raw(
    m: torch.Tensor,
    vd: torch.Tensor,
    k: AdamCoefficients,
    *,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """u and r of float32 1-D `m` and denominator state `vd` (v, or max_exp_avg_sq for AMSGrad).

    r is NOT yet set to 0 where vd == 0 (it holds inf/nan there); `update_and_ratio` does that.
    `m` and `vd` are left untouched. `out` = (u, r, scratch) buffers shaped like m, reused by the
    engine to avoid allocating per block; new ones are made when it is None.
    """
    import torch

    uo, ro, tmp = out if out is not None else (torch.empty_like(m) for _ in range(3))
    if k.bias_correction:
        torch.div(m, k.bc1, out=uo)
    else:
        uo.copy_(m)
    if k.convention == "torch":
        torch.sqrt(vd, out=tmp)
        if k.bias_correction:
            tmp.div_(k.sqrt_bc2)  # sqrt(v_hat) exactly as torch forms its denominator
        torch.div(uo, tmp, out=ro)
        if k.eps_inside_sqrt:
            if k.bias_correction:
                torch.div(vd, k.bc2, out=tmp)
            else:
                tmp.copy_(vd)
            tmp.add_(k.eps).sqrt_()
        else:
            tmp.add_(k.eps)
    else:  # paper: m' = b1 m_hat, v' = b2 v_hat
        uo.mul_(k.beta1)
        if k.bias_correction:
            torch.div(vd, k.bc2, out=tmp)
        else:
            tmp.copy_(vd)
        tmp.mul_(k.beta2)
        torch.sqrt(tmp, out=ro)
        torch.div(uo, ro, out=ro)
        if k.eps_inside_sqrt:
            tmp.add_(k.eps).sqrt_()
        else:
            tmp.sqrt_().add_(k.eps)
    uo.div_(tmp)
    return uo, ro


def update_and_ratio(
    m: torch.Tensor, vd: torch.Tensor, k: AdamCoefficients
) -> tuple[torch.Tensor, torch.Tensor]:
    """u and r of finite float32 `m`, `vd`, with r = 0 where vd == 0 (see the module docstring)."""
    u, r = update_and_ratio_raw(m, vd, k)
    r.masked_fill_(vd == 0, 0.0)
    return u, r
