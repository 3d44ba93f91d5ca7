"""Gradients recovered from the raw EMAs of two checkpoints of one run (docs/gradients.md).

Adam's moments after step t are m_t = b1 m_(t-1) + (1-b1) g_t and v_t = b2 v_(t-1) + (1-b2) g_t^2,
so k steps apart, with w_j = (1-b1) b1^j / (1-b1^k) and w'_j = (1-b2) b2^j / (1-b2^k):
    (m_t - b1^k m_(t-k)) / (1 - b1^k) = sum_j w_j  g_(t-j)      (j = 0..k-1)
    (v_t - b2^k v_(t-k)) / (1 - b2^k) = sum_j w'_j g_(t-j)^2
For k = 1 these are g_t and g_t^2 exactly, and comparing the square of the first with the second
tells whether the pair really is consecutive and unmodified. For k > 1 they are weighted means over
the window: estimates, flagged `exact = false`.

g is the gradient Adam consumed: p.grad for AdamW (decoupled decay never enters m), p.grad +
wd*theta for Adam with weight decay (coupled), -p.grad with maximize. `loss_gradient` subtracts
wd*theta_(t-1) again for coupled decay when the earlier checkpoint holds the weights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from adamscope.config import ReaderOptions
from adamscope.errors import AdamscopeError
from adamscope.forensics.lockstep import (
    Side,
    aligned,
    in_blocks,
    model_weights,
    state_source,
    tensor_source,
    unit_roundoff,
)
from adamscope.vocab import TensorState

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Rounding of one stored EMA update (lerp / mul + addcmul in the stored dtype), in unit roundoffs.
ROUNDING_ULPS = 4.0


@dataclass(frozen=True, kw_only=True)
class GradientOptions:
    """How `pair_gradients` reads and judges a pair of checkpoints."""

    reader: ReaderOptions = field(default_factory=ReaderOptions)
    chunk_elems: int = 1 << 22  # elements per chunk of each stream: bounds memory
    assume_consecutive: bool = False  # use the one-step formulas whatever the stored steps say
    loss_gradient: bool = False  # coupled decay: subtract wd * theta_(t-1) (needs weights in A)
    floor_factor: float = 3.0  # consistent: g2_mismatch <= floor_factor * g2_mismatch_floor ...
    max_negative_frac: float = 0.0  # ... and g2_negative_frac <= this


@dataclass
class Sums:
    """Mergeable sums over the coordinates of a tensor, piece or layer."""

    numel: int = 0
    nonfinite: int = 0
    g2: float = 0.0  # sum g^2, g = window mean gradient from m
    g2v: float = 0.0  # sum of the window mean of g^2 from v
    u2: float = 0.0
    ug: float = 0.0
    vhat: float = 0.0  # sum v_hat of the later checkpoint
    d2: float = 0.0  # sum (g1^2 - g1sq)^2, one-step recoveries from m and from v
    q2: float = 0.0  # sum g1sq^2
    e2: float = 0.0  # sum of squared rounding bounds of g1^2 - g1sq
    neg: int = 0  # coordinates with g1sq < -its rounding bound

    def add(self, o: Sums) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(o, f.name))


def _window(a: TensorState | None, b: TensorState, assume: bool) -> int:
    if assume:
        return 1
    k = int(round(b.step - (a.step if a is not None else 0.0)))
    if k < 1:
        raise AdamscopeError(
            f"{b.name}: step {b.step:g} is not later than step {a.step if a else 0:g}; "
            "pass the earlier checkpoint first"
        )
    return k


def _u(m: torch.Tensor, vd: torch.Tensor, ts: TensorState) -> torch.Tensor:
    """Adam's update in the torch convention, computed in float32 as torch does."""
    import torch

    from adamscope.stats.adam import coefficients, update_and_ratio

    k = coefficients(ts.hp, ts.step, convention="torch", name=ts.name)
    u, _ = update_and_ratio(m.to(torch.float32), vd.to(torch.float32), k)
    return u.to(torch.float64)


def pair_sums(
    a: TensorState | None,
    b: TensorState,
    *,
    window: int,
    weights: Any | None,
    wd: float,
    chunk_elems: int,
) -> Sums:
    """Stream one tensor (or piece) of both checkpoints in lockstep and accumulate `Sums`.

    `a` is None for a tensor first stepped at step 1 of `b` (m_0 = v_0 = 0). `weights` (lazy
    theta_(t-1) from A) and `wd` subtract coupled weight decay from the recovered gradient.
    """
    import torch

    b1, b2 = b.hp.beta1, b.hp.beta2
    sources = [state_source(b, chunk_elems)]
    if a is not None:
        sources.append(state_source(a, chunk_elems))
    if weights is not None:
        lo, hi = (b.piece[0], b.piece[1]) if b.piece else (0, None)
        sources.append(tensor_source(weights, chunk_elems, start=lo, stop=hi))
    open_ended = frozenset({len(sources) - 1}) if weights is not None and b.piece else frozenset()
    s = Sums()
    f64 = torch.float64
    with torch.no_grad():
        for _, parts in in_blocks(aligned(sources, what=b.name, open_ended=open_ended)):
            mb, vb, vmax = parts[0]
            ud = unit_roundoff(mb.dtype)
            mb, vb = mb.to(f64), vb.to(f64)
            if a is not None:
                ma, va, _ = parts[1]
                ud = max(ud, unit_roundoff(ma.dtype))
                ma, va = ma.to(f64), va.to(f64)
            else:
                ma, va = torch.zeros_like(mb), torch.zeros_like(vb)
            vd = vb if vmax is None else vmax.to(f64)
            theta = parts[-1][0].to(f64) if weights is not None else None
            ok = mb.isfinite() & vb.isfinite() & ma.isfinite() & va.isfinite() & vd.isfinite()
            if theta is not None:
                ok &= theta.isfinite()
            n = int(mb.numel())
            if not bool(ok.all()):
                s.nonfinite += n - int(ok.sum())
                mb, vb, ma, va, vd = mb[ok], vb[ok], ma[ok], va[ok], vd[ok]
                theta = theta[ok] if theta is not None else None
            _accumulate(s, mb, vb, ma, va, vd, theta, b, window=window, wd=wd, ud=ud, b1=b1, b2=b2)
            s.numel += n
    return s


def _accumulate(
    s: Sums,
    mb: torch.Tensor,
    vb: torch.Tensor,
    ma: torch.Tensor,
    va: torch.Tensor,
    vd: torch.Tensor,
    theta: torch.Tensor | None,
    b: TensorState,
    *,
    window: int,
    wd: float,
    ud: float,
    b1: float,
    b2: float,
) -> None:
    # one-step recoveries: the consistency check, whatever the window
    g1 = (mb - b1 * ma) / (1 - b1)
    g1sq = (vb - b2 * va) / (1 - b2)
    dm = ROUNDING_ULPS * ud * (mb.abs() + b1 * ma.abs()) / (1 - b1)
    dv = ROUNDING_ULPS * ud * (vb + b2 * va) / (1 - b2)
    err = 2 * g1.abs() * dm + dm * dm + dv
    s.d2 += float(((g1 * g1 - g1sq) ** 2).sum())
    s.q2 += float((g1sq * g1sq).sum())
    s.e2 += float((err * err).sum())
    s.neg += int((g1sq < -dv).sum())
    if window == 1:
        g, g2 = g1, g1sq
    else:
        g = (mb - b1**window * ma) / (1 - b1**window)
        g2 = (vb - b2**window * va) / (1 - b2**window)
    if theta is not None:
        g = g - wd * theta
    u = _u(mb, vd, b)
    s.g2 += float((g * g).sum())
    s.g2v += float(g2.sum())
    s.u2 += float((u * u).sum())
    s.ug += float((u * g).sum())
    bc2 = 1 - b2**b.step if b.hp.bias_correction else 1.0
    s.vhat += float(vb.sum()) / bc2


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return math.sqrt(num / den)
    return 0.0 if num == 0 else math.inf


def stats_row(s: Sums, *, exact: bool, options: GradientOptions) -> dict[str, Any]:
    """The statistics columns of one tensor/layer from its sums (formulas in docs/gradients.md)."""
    n = max(s.numel - s.nonfinite, 1)
    norm = math.sqrt(s.g2) if exact else math.sqrt(max(s.g2v, 0.0))
    den = math.sqrt(s.u2 * s.g2)
    mismatch, floor = _ratio(s.d2, s.q2), _ratio(s.e2, s.q2)
    neg = s.neg / n
    return {
        "numel": s.numel,
        "grad_norm": norm,
        "grad_rms": norm / math.sqrt(n),
        "window_grad_norm": math.sqrt(s.g2),
        "grad_rms_vhat": math.sqrt(max(s.vhat, 0.0) / n),
        "update_grad_cos": s.ug / den if den > 0 else math.nan,
        "g2_mismatch": mismatch,
        "g2_mismatch_floor": floor,
        "g2_negative_frac": neg,
        "consistent": bool(
            mismatch <= options.floor_factor * floor and neg <= options.max_negative_frac
        ),
        "nonfinite": s.nonfinite,
    }


def _grad_kind(ts: TensorState, subtracted: bool) -> str:
    wd = ts.hp.weight_decay or 0.0
    if wd == 0 or ts.hp.decoupled_weight_decay or subtracted:
        return "loss"
    if ts.hp.decoupled_weight_decay is None:
        return "unknown"  # an old torch file: Adam (coupled) and AdamW (decoupled) look the same
    return "loss+wd"


def iter_pair(
    a: Side, b: Side, *, options: GradientOptions
) -> Iterator[tuple[TensorState, Sums, int, str]]:
    """(TensorState of B, its Sums, window, grad_kind) per tensor, pieces merged."""
    weights = _weights_for(a, b, options)
    merged: dict[str, tuple[TensorState, Sums, int, str]] = {}
    for key, tb in b.states.items():
        ta = a.states.get(key)
        if ta is None and round(tb.step) != 1:
            log.warning("%s: '%s' has no optimizer state in %s; skipped", b.path, tb.name, a.path)
            continue
        window = _window(ta, tb, options.assume_consecutive)
        w = weights.get(tb.name) if weights is not None else None
        wd = tb.hp.weight_decay or 0.0
        if w is not None and not (wd and tb.hp.decoupled_weight_decay is False):
            w = None  # nothing to subtract
        s = pair_sums(ta, tb, window=window, weights=w, wd=wd, chunk_elems=options.chunk_elems)
        kind = _grad_kind(tb, w is not None)
        if tb.name in merged:
            merged[tb.name][1].add(s)
        else:
            merged[tb.name] = (tb, s, window, kind)
    yield from merged.values()


def _weights_for(a: Side, b: Side, options: GradientOptions) -> dict[str, Any] | None:
    if not options.loss_gradient:
        return None
    coupled = [
        ts for ts in b.states.values() if ts.hp.weight_decay and not ts.hp.decoupled_weight_decay
    ]
    if not coupled:
        return None
    if any(ts.hp.decoupled_weight_decay is None for ts in coupled):
        log.warning(
            "%s: the file does not say whether weight decay is coupled (Adam) or decoupled "
            "(AdamW); assuming decoupled, nothing subtracted where unknown",
            b.path,
        )
    weights = model_weights(a)
    if weights is None:
        raise AdamscopeError(
            f"{a.path}: loss_gradient needs the model weights theta_(t-1), but this checkpoint "
            "holds none; drop the option to get the gradient Adam consumed (p.grad + wd*theta)"
        )
    return weights
