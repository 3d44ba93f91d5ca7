"""Scoring early-warning signals against loss spikes: the share of spikes a signal precedes, how
early, and how often it fires when no spike follows (docs/experiments/spike-corpus.md).

A *check* is a step at which a signal was evaluated (a monitor flush). A signal is *on* at a check
when its value is above its threshold (below, for direction "below"; NaN is off, inf is a value).
- **Hit**: a spike starting at step s is preceded when the signal is on at some check a with
  s - lead <= a <= s - 1 (every check counts: runs are monitored every step before a spike). Its
  **lead time** is s - (the earliest such a).
- **False alarm**: counted on periodic checks only (step % every == 0), so a run monitored every
  step around its spikes and every `every` steps elsewhere counts like a control. Checks in
  [s - lead, end + after] of any spike are neither hits nor false alarms. An alarm counts once per
  `refractory` steps (a guard that fires, then stays quiet that long), so a signal on at every check
  gives 1000 / max(refractory, every) per 1,000 steps and one never on gives 0. The rate is per
  1,000 steps of the span the counted checks cover (their number times `every`).

A run's signal value per check comes from a layers table (adamscope.load(...).layers, one row per
layer and step): the layer column is transformed (level, ratio to its trailing median, or robust
z-score against its trailing median and MAD, both over the last `baseline` periodic checks before
the step), then reduced over layers (max, min, any, or the norm for g_norm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from adamscope.errors import AdamscopeError

MAD_TO_STD = 1.4826

Transform = Literal["level", "ratio", "z"]
Reduce = Literal["max", "min", "any", "norm"]


@dataclass(frozen=True, kw_only=True)
class ScoreOptions:
    """How hits and false alarms are counted (see the module docstring)."""

    lead: int = 20  # steps before a spike's start in which an alarm counts as preceding it
    refractory: int = 20  # after a counted false alarm, the next counts only this many steps later
    after: int = 50  # steps after a spike's end during which alarms are not false alarms
    every: int = 10  # the periodic check interval of the runs (the monitor's `every`)
    baseline: int = 10  # periodic checks in the trailing median/MAD of ratio and z signals

    def __post_init__(self) -> None:
        for k in ("lead", "refractory", "every", "baseline"):
            if getattr(self, k) < 1:
                raise AdamscopeError(f"ScoreOptions.{k} = {getattr(self, k)}: needs >= 1")
        if self.after < 0:
            raise AdamscopeError(f"ScoreOptions.after = {self.after}: needs >= 0")


@dataclass(frozen=True, kw_only=True)
class Signal:
    """A run-level alarm read off a layers table.

    column: a layers column; for a string column (stage, stage_snapshot) the value is 1 where it is
    in `match`, else 0. skip_layers: layers left out (e.g. the head, whose rare-vocabulary rows make
    r bimodal in healthy runs). thresholds: the values scored (a curve in the figure).
    """

    name: str
    column: str
    thresholds: tuple[float, ...]
    direction: Literal["above", "below"] = "above"
    transform: Transform = "level"
    reduce: Reduce = "max"
    match: tuple[str, ...] = ()
    skip_layers: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunSeries:
    """One run's signal: values at its checks, its spikes and its length."""

    run: str
    steps: np.ndarray  # checked steps, increasing
    values: np.ndarray  # the signal at each check (NaN: not available there)
    spikes: tuple[tuple[int, int], ...]  # (start, end) of each loss spike
    n_steps: int  # steps the run trained
    control: bool = False  # a stable control (no spike expected)


def series(layers: pl.DataFrame, signal: Signal, *, options: ScoreOptions) -> pl.DataFrame:
    """The run-level value of `signal` per checked step: a frame (step, value), step-sorted.

    Raises:
        AdamscopeError: the layers table lacks the column.
    """
    if signal.column not in layers.columns:
        raise AdamscopeError(f"layers table: no column {signal.column!r} for signal {signal.name}")
    df = layers.filter(~pl.col("layer").is_in(list(signal.skip_layers)))
    df = df.select("step", "layer", pl.col(signal.column).alias("x")).sort("layer", "step")
    if df.schema["x"] == pl.Utf8:
        df = df.with_columns(x=pl.col("x").is_in(list(signal.match)).cast(pl.Float64))
    else:
        df = df.with_columns(pl.col("x").cast(pl.Float64).fill_nan(None))
    parts = []
    for (layer,), g in df.group_by(["layer"], maintain_order=True):
        steps = g["step"].to_numpy()
        x = g["x"].to_numpy().astype(np.float64)
        parts.append(pl.DataFrame({"step": steps, "layer": [layer] * len(steps), "x": x}))
    if not parts:
        return pl.DataFrame(
            {"step": [], "value": []}, schema={"step": pl.Int64, "value": pl.Float64}
        )
    if signal.reduce == "norm":  # one run-level series, then the transform
        total = (
            pl.concat(parts).group_by("step").agg(x=(pl.col("x") ** 2).sum().sqrt()).sort("step")
        )
        v = _transform(total["step"].to_numpy(), total["x"].to_numpy(), signal.transform, options)
        return pl.DataFrame({"step": total["step"].cast(pl.Int64), "value": v})
    out = []
    for p in parts:
        v = _transform(p["step"].to_numpy(), p["x"].to_numpy(), signal.transform, options)
        out.append(p.with_columns(v=pl.Series(v).fill_nan(None)))
    agg = {
        "max": pl.col("v").max(),
        "min": pl.col("v").min(),
        "any": (pl.col("v") > 0.5).any().cast(pl.Float64),
    }[signal.reduce]
    res = pl.concat(out).group_by("step").agg(value=agg).sort("step")
    return res.with_columns(pl.col("step").cast(pl.Int64), pl.col("value").cast(pl.Float64))


def _transform(steps: np.ndarray, x: np.ndarray, how: Transform, opt: ScoreOptions) -> np.ndarray:
    """x itself, or x against the last `baseline` periodic checks strictly before each step."""
    x = np.asarray(x, dtype=np.float64)
    if how == "level":
        return x
    periodic = np.flatnonzero((steps % opt.every == 0) & np.isfinite(x))
    out = np.full(len(x), np.nan)
    for i, s in enumerate(steps):
        k = np.searchsorted(steps[periodic], s)  # periodic checks before s
        base = x[periodic[max(0, k - opt.baseline) : k]]
        if len(base) < 3 or not math.isfinite(x[i]):
            continue
        med = float(np.median(base))
        if how == "ratio":
            out[i] = x[i] / med if med > 0 else np.nan
        else:
            mad = float(np.median(np.abs(base - med)))
            scale = max(MAD_TO_STD * mad, 1e-6 * abs(med), 1e-30)
            out[i] = (x[i] - med) / scale
    return out


def on(values: np.ndarray, threshold: float, direction: str) -> np.ndarray:
    """Where the signal alarms (NaN never does)."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        hit = v > threshold if direction == "above" else v < threshold
    return hit & ~np.isnan(v)  # rho_hat is inf at the bound |r| = 1: that alarms


def _excluded(steps: np.ndarray, run: RunSeries, opt: ScoreOptions) -> np.ndarray:
    ex = np.zeros(len(steps), dtype=bool)
    for start, end in run.spikes:
        ex |= (steps >= start - opt.lead) & (steps <= end + opt.after)
    return ex


def leads(run: RunSeries, alarm: np.ndarray, opt: ScoreOptions) -> list[int | None]:
    """Per spike of the run, the lead time of the signal, or None (a miss)."""
    out: list[int | None] = []
    for start, _ in run.spikes:
        w = (run.steps >= start - opt.lead) & (run.steps <= start - 1) & alarm
        out.append(int(start - run.steps[w].min()) if w.any() else None)
    return out


def false_alarms(run: RunSeries, alarm: np.ndarray, opt: ScoreOptions) -> tuple[int, int]:
    """(false alarms, steps they were counted over) on the run's periodic checks."""
    periodic = (run.steps % opt.every == 0) & ~np.isnan(run.values)
    counted = periodic & ~_excluded(run.steps, run, opt)
    n, last = 0, -math.inf
    for s in run.steps[counted & alarm]:
        if s - last >= opt.refractory:
            n, last = n + 1, s
    return n, int(counted.sum()) * opt.every


def score(
    runs: Sequence[RunSeries],
    thresholds: Sequence[float],
    *,
    direction: str = "above",
    options: ScoreOptions | None = None,
) -> list[dict]:
    """One row per threshold: spikes, hits, hit_rate, the lead times (list and median/quartiles),
    false alarms per 1,000 steps on controls, on spiking runs away from spikes, and pooled."""
    opt = options or ScoreOptions()
    rows = []
    for thr in thresholds:
        all_leads: list[int | None] = []
        fa = {"control": [0, 0], "away": [0, 0]}
        for r in runs:
            alarm = on(r.values, thr, direction)
            all_leads += leads(r, alarm, opt)
            n, steps = false_alarms(r, alarm, opt)
            key = "control" if r.control else "away"
            fa[key][0] += n
            fa[key][1] += steps
        got = sorted(x for x in all_leads if x is not None)
        n_fa, n_steps = fa["control"][0] + fa["away"][0], fa["control"][1] + fa["away"][1]
        rows.append(
            {
                "threshold": float(thr),
                "spikes": len(all_leads),
                "hits": len(got),
                "hit_rate": len(got) / len(all_leads) if all_leads else float("nan"),
                "leads": got,
                "lead_median": float(np.median(got)) if got else float("nan"),
                "lead_q25": float(np.quantile(got, 0.25)) if got else float("nan"),
                "lead_q75": float(np.quantile(got, 0.75)) if got else float("nan"),
                "fa_control": fa["control"][0],
                "fa_control_steps": fa["control"][1],
                "fa_per_1k_control": _rate(*fa["control"]),
                "fa_away": fa["away"][0],
                "fa_away_steps": fa["away"][1],
                "fa_per_1k_away": _rate(*fa["away"]),
                "fa_per_1k": _rate(n_fa, n_steps),
            }
        )
    return rows


def _rate(n: int, steps: int) -> float:
    return 1000.0 * n / steps if steps else float("nan")


def _stage(name: str, column: str, match: tuple[str, ...], skip: tuple[str, ...] = ()) -> Signal:
    return Signal(
        name=name, column=column, thresholds=(0.5,), match=match, reduce="any", skip_layers=skip
    )


# every signal the monitor's layers table gives (docs/experiments/spike-corpus.md scores them)
SIGNALS: tuple[Signal, ...] = (
    _stage("stage_primed", "stage", ("primed",)),
    _stage("stage_primed_nohead", "stage", ("primed",), ("head",)),
    _stage("stage_unstable", "stage", ("unstable",)),
    _stage("stage_vanishing", "stage", ("vanishing", "primed")),
    _stage("snapshot_r_bimodal", "stage_snapshot", ("primed", "unstable")),
    Signal(name="rho_hat", column="rho_hat", thresholds=(0.25, 0.5, 1.0, 2.0, 4.0)),
    Signal(
        name="rho_hat_nohead",
        column="rho_hat",
        thresholds=(0.25, 0.5, 1.0, 2.0, 4.0),
        skip_layers=("head",),
    ),
    Signal(name="dip_r", column="dip_r", thresholds=(0.005, 0.01, 0.02, 0.05)),
    Signal(
        name="suppression",
        column="suppression",
        thresholds=(0.9, 0.5, 0.25, 0.1),
        direction="below",
        reduce="min",
    ),
    Signal(name="frac_below_eps", column="frac_below_eps", thresholds=(0.25, 0.5, 0.9, 0.99)),
    Signal(
        name="v_l1_fall",
        column="v_l1",
        thresholds=(0.95, 0.9, 0.75, 0.5),
        direction="below",
        transform="ratio",
        reduce="min",
    ),
    Signal(name="v_l1_rise", column="v_l1", thresholds=(1.1, 1.25, 1.5, 2.0), transform="ratio"),
    Signal(name="g2_vhat_mean", column="g2_vhat_mean", thresholds=(0.5, 1.0, 2.0, 5.0)),
    Signal(  # Bai et al.'s phase before the spike: v_hat lags, g^2 << v_hat in every layer
        name="g2_vhat_low",
        column="g2_vhat_mean",
        thresholds=(0.5, 0.3, 0.2, 0.1),
        direction="below",
        reduce="max",
    ),
    Signal(name="g2_vhat_gt1", column="g2_vhat_gt1", thresholds=(0.15, 0.2, 0.3, 0.5)),
    Signal(name="update_rms", column="update_rms", thresholds=(0.01, 0.02, 0.03, 0.05)),
    Signal(
        name="update_rms_ratio",
        column="update_rms",
        thresholds=(1.25, 1.5, 2.0, 3.0),
        transform="ratio",
    ),
    Signal(
        name="update_grad_cos",
        column="update_grad_cos",
        thresholds=(0.3, 0.2, 0.1, 0.0),
        direction="below",
        reduce="min",
    ),
    Signal(
        name="grad_norm_z",
        column="g_norm",
        thresholds=(2.0, 3.0, 4.5, 6.0),
        transform="z",
        reduce="norm",
    ),
)
