"""Table rows from sketches: the statistics columns of tensors/layers.parquet, with the dip tests,
the null model of r at the checkpoint's step, rho_hat and the stage rule (docs/tables.md lists
every column, docs/stages.md the rule); and the run-level verdicts over a series of checkpoints."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import polars as pl

from adamscope.config import StageThresholds
from adamscope.stats import null
from adamscope.stats.bimodality import dips_later
from adamscope.stats.sketch import TensorSketch
from adamscope.stats.stages import classify, verdict, verdicts

JUDGE_N = 65536
_RHO_GRID = 1.025  # beyond step 64, rho_hat's table is taken at steps 2.5% apart (it moves slowly)


Dips = tuple[float, float, float, float, int]  # dip_u, dip_r, p_u, p_r, n


def dips(sk: TensorSketch) -> Dips:
    """(dip_u, dip_r, p_u, p_r, n): Hartigan's dip and its p-value on the sketch's dip sample."""
    su, sr = sk.dip_sample()
    (du, pu), (dr, pr) = (f.result() for f in dips_later(su, sr))
    return du, dr, pu, pr, int(su.size)


class RowLater:
    """A sketch's row whose dips run on the dip threads (`bimodality.dips_later`) meanwhile:
    `result()` waits for them. Holds the row's other columns and the dip samples until then, not
    the sketch."""

    def __init__(self, sk: TensorSketch, thresholds: StageThresholds | None = None) -> None:
        su, sr = sk.dip_sample()
        self.n_dip = int(su.size)
        self.futures = dips_later(su, sr)
        self.thr = thresholds or sk.cfg.thresholds
        self.ctx = _NullContext(sk.hp, sk.step, sk.cfg)
        self.n = sk.mu.n
        self.row = _moment_columns(sk)

    def result(self) -> dict[str, Any]:
        """The whole row (a new dict each call)."""
        (du, pu), (dr, pr) = (f.result() for f in self.futures)
        dn, n, step = self.n_dip, self.n, self.ctx.step
        row = {**self.row, "dip_u": du, "dip_r": dr, "dip_p_u": pu, "dip_p_r": pr, "dip_n": dn}
        row.update(null_columns(self.ctx, dip_r=dr, dip_p_r=pr, dip_n=dn, r_rms=row["r_rms"], n=n))
        snap = classify({**row, "step": step}, self.thr)
        row["stage_snapshot"] = snap
        row["stage"] = verdict(snap, None, suppression=row["suppression"], thresholds=self.thr)
        row["stage_reason"] = reason(row, step=step, previous=None, thresholds=self.thr)
        return row


@dataclass(frozen=True)
class _NullContext:
    """What `null_columns` reads of a sketch."""

    hp: Any
    step: float
    cfg: Any


def stats_row(sk: TensorSketch, thresholds: StageThresholds | None = None) -> dict[str, Any]:
    """The statistics columns of a tensor's or a layer's row, stages included (`stage` judged
    from this checkpoint alone; `run_verdicts` re-judges a series).

    `thresholds` defaults to the ones the sketch was computed with (its StatsConfig).
    """
    return RowLater(sk, thresholds).result()


def _moment_columns(sk: TensorSketch) -> dict[str, Any]:
    """Every column of `stats_row` that does not need the dips."""
    n = sk.mu.n
    nan = math.nan
    u_rms, r_rms = sk.mu.rms, sk.mr.rms
    return {
        "numel": sk.numel,
        "u_mean": sk.mu.mean if n else nan,
        "u_std": sk.mu.std,
        "u_rms": u_rms,
        "r_mean": sk.mr.mean if n else nan,
        "r_std": sk.mr.std,
        "r_rms": r_rms,
        "suppression": u_rms / r_rms if n and r_rms > 0 else nan,
        "grad_rms": math.sqrt(sk.vhat_sum / n) if n else nan,
        "frac_below_eps": sk.below_eps / n if n else nan,
        "m_norm": math.sqrt(sk.m_sq),
        "v_l1": sk.v_sum,
        "zero_v": sk.zero_v,
        "nonfinite": sk.nonfinite,
        "u_min": sk.u_min if n else nan,
        "u_max": sk.u_max if n else nan,
        "r_min": sk.r_min if n else nan,
        "r_max": sk.r_max if n else nan,
        "bc_u": sk.mu.bimodality_coefficient(),
        "bc_r": sk.mr.bimodality_coefficient(),
    }


def null_columns(
    sk: TensorSketch | _NullContext,
    *,
    dip_r: float,
    dip_p_r: float,
    dip_n: int,
    r_rms: float,
    n: int,
) -> dict[str, Any]:
    """r's null at the sketch's (betas, step, dip sample size): its std, its dip's 99% quantile,
    the observed dip's p-value against it, the step from which a dip can be judged, rho_hat."""
    hp, t, conv = sk.hp, float(sk.step), sk.cfg.convention
    out: dict[str, Any] = dict.fromkeys(
        (
            "null_r_std",
            "null_dip_q99",
            "dip_p_null",
            "judge_from_step",
            "rho_hat",
            "rho_lo",
            "rho_hi",
        )
    )
    if not (0 <= hp.beta1 < 1 and 0 <= hp.beta2 < 1 and math.isfinite(t) and t >= 1):
        return out  # a state the null does not describe (the row says so by its nulls)
    kw = {"bias_correction": hp.bias_correction}
    if dip_n >= 4:
        # judged as if on the largest dip sample (65,536): later, so conservative, for smaller
        # ones (the null's bimodality is harder to see on fewer points), and one scan per betas
        judge = null.judge_from_step(hp.beta1, hp.beta2, n_sample=JUDGE_N, **kw)
        out["judge_from_step"] = judge if judge < null.NEVER else None
        if t < judge:  # the null is itself bimodal here: the full Monte Carlo null
            nm = null.null_stats(hp.beta1, hp.beta2, t, dip_n, convention=conv, **kw)
            out["null_dip_q99"] = nm.dip_q[0.99]
            out["dip_p_null"] = nm.p_value(dip_r) if math.isfinite(dip_r) else None
        else:  # from judge_from_step on the null is unimodal: diptest's p-value is valid against it
            out["null_dip_q99"] = null.reference_dip_quantile(dip_n, 0.99)
            out["dip_p_null"] = dip_p_r
        out["null_r_std"] = null.null_r_std(hp.beta1, hp.beta2, t, convention=conv, **kw)
    if n and math.isfinite(r_rms):
        tq = t if t <= 64 else _RHO_GRID ** round(math.log(t, _RHO_GRID))
        rho = null.rho_hat(r_rms, hp.beta1, hp.beta2, tq, numel=n, convention=conv, **kw)
        out["rho_hat"], out["rho_lo"], out["rho_hi"] = rho
    return out


def _g(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def reason(
    row: dict[str, Any],
    *,
    step: float,
    previous: tuple[str, int] | None,
    thresholds: StageThresholds,
) -> str | None:
    """Why a row has its stage, in one line: the numbers the rule looked at."""
    stage = row.get("stage")
    if stage is None:
        return None
    sup = f"suppression {_g(row.get('suppression'))} (threshold {thresholds.suppression})"
    dip_ = (
        f"dip(r) {_g(row.get('dip_r'))} vs the null's 99% {_g(row.get('null_dip_q99'))}, "
        f"p {_g(row.get('dip_p_null'))}"
    )
    rho = f"rho_hat {_g(row.get('rho_hat'))}"
    t = int(round(step))
    if stage == "too_early":
        return (
            f"step {t} < {row.get('judge_from_step') or 'never'}: independent gradients give a "
            f"bimodal r this early; {sup}"
        )
    if stage == "correlated":
        return (
            f"r bimodal beyond the null ({dip_}; {rho}), u not suppressed ({sup}), but not right "
            f"after vanishing/primed with u ~ r (suppression >= {thresholds.u_equals_r}): "
            "sign-descent-like; one checkpoint cannot tell unstable"
        )
    if stage == "unstable" and previous is not None:
        return f"{dip_}; {rho}; {sup}; after {previous[0]} at step {previous[1]}"
    return f"{dip_}; {rho}; {sup}"


def run_verdicts(df: pl.DataFrame, *, key: str, thresholds: StageThresholds) -> pl.DataFrame:
    """`stage` and `stage_reason` of a tensors or layers table judged as a series: per `key`
    (tensor or layer), in step order, by the chain rule of stats.stages.verdicts."""
    if df.is_empty() or "stage_snapshot" not in df.columns:
        return df
    df = df.with_row_index("_i")
    order = df.sort("step", "checkpoint")
    stage: dict[int, str | None] = {}
    why: dict[int, str | None] = {}
    for _, grp in order.group_by(key, maintain_order=True):
        rows = grp.to_dicts()
        judged = verdicts(((r["stage_snapshot"], r["suppression"]) for r in rows), thresholds)
        previous: tuple[str, int] | None = None
        for r, v in zip(rows, judged, strict=True):
            r["stage"] = v
            stage[r["_i"]] = v
            why[r["_i"]] = reason(r, step=r["step"], previous=previous, thresholds=thresholds)
            if v not in (None, "too_early"):
                previous = (v, int(r["step"]))
    idx = df["_i"].to_list()
    return df.with_columns(
        stage=pl.Series([stage[i] for i in idx], dtype=pl.Utf8),
        stage_reason=pl.Series([why[i] for i in idx], dtype=pl.Utf8),
    ).drop("_i")
