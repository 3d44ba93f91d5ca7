"""Live-only statistics of one parameter tensor at an optimizer step: what exists only while
training runs (the gradient p.grad the step used, the parameter the step moved), as a mergeable
`LiveSketch` (sums and one histogram), reduced on the device the tensors live on.

    g        p.grad as the step left it (after unscaling and clipping, which act in place before
             step(); coupled L2 weight decay is added inside step() and is not in it)
    v_hat    exp_avg_sq / (1 - beta2**t)  (max_exp_avg_sq for AMSGrad)
    g2_vhat  g**2 / v_hat where v_hat > 0: Bai et al. (2025) tie loss spikes to it exceeding 1
    u        the Adam update of stats.adam (torch convention unless `convention="paper"`)
    update   the parameter change of the step: lr * u, plus lr * wd * theta_before for decoupled
             weight decay (AdamW), with theta_before = (theta + lr * u) / (1 - lr * wd) recovered
             exactly from the parameter after the step
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from adamscope.stats.adam import AdamCoefficients, update_and_ratio_raw

if TYPE_CHECKING:
    import torch

# log10(g^2 / v_hat) histogram: 20 bins a decade over [1e-20, 1e10); below: zeros and the
# negligible, above: nothing a float32 state can reach (g^2 / v_hat <= 1 / (1 - beta2) ... 1e7)
RATIO_LO, RATIO_HI, RATIO_PER_DECADE = -20, 10, 20
RATIO_BINS = (RATIO_HI - RATIO_LO) * RATIO_PER_DECADE
QUANTILES = (0.5, 0.9, 0.99)


@dataclass
class LiveSketch:
    """Sums over the finite coordinates of one tensor (or piece, or layer), in float64."""

    n: int = 0  # coordinates where g, u and the update are finite
    g_sq: float = 0.0
    u_sq: float = 0.0
    ug: float = 0.0
    upd_sq: float = 0.0
    ratio_n: int = 0  # coordinates with v_hat > 0 (and finite g)
    ratio_sum: float = 0.0
    ratio_gt1: int = 0
    # counts of log10(g^2/v_hat): [underflow (zeros), RATIO_BINS bins, overflow]
    ratio_hist: np.ndarray = field(default_factory=lambda: np.zeros(RATIO_BINS + 2, np.int64))

    def merge(self, o: LiveSketch) -> LiveSketch:
        return LiveSketch(
            n=self.n + o.n,
            g_sq=self.g_sq + o.g_sq,
            u_sq=self.u_sq + o.u_sq,
            ug=self.ug + o.ug,
            upd_sq=self.upd_sq + o.upd_sq,
            ratio_n=self.ratio_n + o.ratio_n,
            ratio_sum=self.ratio_sum + o.ratio_sum,
            ratio_gt1=self.ratio_gt1 + o.ratio_gt1,
            ratio_hist=self.ratio_hist + o.ratio_hist,
        )

    def quantile(self, q: float) -> float:
        """The q-quantile of g^2/v_hat from the histogram (log-linear within a bin: within 12%);
        0 when it falls among the zeros."""
        total = int(self.ratio_hist.sum())
        if total == 0:
            return math.nan
        target = q * total
        cum = np.cumsum(self.ratio_hist)
        i = int(np.searchsorted(cum, target, side="left"))
        if i == 0:
            return 0.0
        if i > RATIO_BINS:
            return math.inf
        before = cum[i - 1]
        frac = (target - before) / self.ratio_hist[i] if self.ratio_hist[i] else 0.0
        lo = RATIO_LO + (i - 1) / RATIO_PER_DECADE
        return float(10.0 ** (lo + frac / RATIO_PER_DECADE))

    def columns(self) -> dict[str, Any]:
        """The live columns of a tensors/layers row (tables.schema._LIVE)."""
        nan = math.nan
        n, rn = self.n, self.ratio_n
        den = math.sqrt(self.u_sq * self.g_sq)
        return {
            "g_norm": math.sqrt(self.g_sq),
            "g_rms": math.sqrt(self.g_sq / n) if n else nan,
            "g2_vhat_mean": self.ratio_sum / rn if rn else nan,
            **{f"g2_vhat_q{round(q * 100)}": self.quantile(q) for q in QUANTILES},
            "g2_vhat_gt1": self.ratio_gt1 / rn if rn else nan,
            "update_rms": math.sqrt(self.upd_sq / n) if n else nan,
            "update_grad_cos": self.ug / den if den > 0 else nan,
        }


def live_sketch(
    m: torch.Tensor,
    v: torch.Tensor,
    vmax: torch.Tensor | None,
    g: torch.Tensor,
    theta: torch.Tensor,
    k: AdamCoefficients,
    *,
    lr: float,
    decoupled_wd: float,
    chunk_elems: int,
) -> LiveSketch:
    """The LiveSketch of one tensor's (local) m, v, grad and parameter, chunk by chunk on their
    device; one host transfer at the end. `decoupled_wd` is AdamW's weight decay (0 for Adam's
    coupled L2 decay, which is part of u)."""
    import torch

    dev = m.device
    fm, fv, fg, fp = (x.detach().reshape(-1) for x in (m, v, g, theta))
    fx = None if vmax is None else vmax.detach().reshape(-1)
    acc = torch.zeros(8, dtype=torch.float64, device=dev)
    hist = torch.zeros(RATIO_BINS + 2, dtype=torch.float64, device=dev)
    shrink = 1.0 - lr * decoupled_wd
    f64 = torch.float64
    for s in range(0, fm.numel(), chunk_elems):
        e = s + chunk_elems
        cm, cv, cg, cp = (x[s:e].float() for x in (fm, fv, fg, fp))
        cd = cv if fx is None else fx[s:e].float()
        u, _ = update_and_ratio_raw(cm, cd, k)
        upd = u * lr
        if decoupled_wd:
            upd = upd + (cp + upd) * (lr * decoupled_wd / shrink)
        ok = torch.isfinite(u) & torch.isfinite(cg) & torch.isfinite(upd)
        u = torch.where(ok, u, 0.0)
        gz = torch.where(ok, cg, 0.0)
        upd = torch.where(ok, upd, 0.0)
        vhat = cd / k.bc2 if k.bias_correction else cd
        has = ok & (vhat > 0)
        ratio = torch.where(has, gz * gz / torch.where(has, vhat, 1.0), 0.0)
        lg = torch.log10(ratio[has])
        acc += torch.stack(
            [
                ok.sum(dtype=f64),
                (gz * gz).sum(dtype=f64),
                (u * u).sum(dtype=f64),
                (u * gz).sum(dtype=f64),
                (upd * upd).sum(dtype=f64),
                has.sum(dtype=f64),
                ratio.sum(dtype=f64),
                (ratio > 1).sum(dtype=f64),
            ]
        )
        under = (lg < RATIO_LO).sum(dtype=f64)  # exact zeros give -inf
        over = (lg >= RATIO_HI).sum(dtype=f64)
        inner = lg[(lg >= RATIO_LO) & (lg < RATIO_HI)]
        idx = ((inner - RATIO_LO) * RATIO_PER_DECADE).floor().long().clamp_(0, RATIO_BINS - 1)
        hist[1:-1] += torch.bincount(idx, minlength=RATIO_BINS).to(f64)
        hist[0] += under
        hist[-1] += over
    a = acc.cpu().tolist()
    h = hist.cpu().numpy().astype(np.int64)
    return LiveSketch(
        n=int(a[0]),
        g_sq=a[1],
        u_sq=a[2],
        ug=a[3],
        upd_sq=a[4],
        ratio_n=int(a[5]),
        ratio_sum=a[6],
        ratio_gt1=int(a[7]),
        ratio_hist=h,
    )
