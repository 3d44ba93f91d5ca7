"""Which layers and steps each figure shows: documented rules, each overridable (docs/figures.md).

Candidates are layer rows with a stage (numel >= min_numel). At most `per_figure` layers per figure.
- Figure 2 (healthy u): the checkpoint with the most healthy layers (ties: the latest one outside
  every detected loss spike); its healthy layers, spread evenly over depth.
- Figure 3 (bimodal u during a stall): per layer, its 'unstable' row with the largest dip_u; the
  layers with the largest of these (fallback when no layer is unstable: largest dip_u among rows
  with suppression >= threshold).
- Figure 5 (u spiked at 0): per layer, the step of its smallest suppression; the layers with the
  smallest of these, only those below the suppression threshold when there are any.
- Figure 6 (r bimodal): exactly Figure 5's (layer, step) pairs.
- Figures 7-10: t1, t2, t3 from `adamscope.logs.spikes.detect` on the losses (or `steps`); u and r
  panels use the first checkpoint at or after each t (the last checkpoint when none is after).
  The layer is the embedding (or the shallowest layer, or `focus_layer`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from adamscope.errors import AdamscopeError
from adamscope.tables.model import Tables

log = logging.getLogger(__name__)

Pair = tuple[str, int]  # (layer, checkpoint step)


@dataclass(kw_only=True)
class Selection:
    """What every figure shows. Build it with `select`, or by hand to override everything."""

    fig2_step: int | None = None
    fig2_layers: list[str] = field(default_factory=list)
    fig3: list[Pair] = field(default_factory=list)
    fig5: list[Pair] = field(default_factory=list)
    t: dict[str, int | None] = field(default_factory=dict)  # t1..t3 in the loss log's steps
    t_checkpoint: dict[str, int | None] = field(default_factory=dict)  # checkpoint used for u/r
    focus_layer: str | None = None
    spikes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fig6(self) -> list[Pair]:
        return list(self.fig5)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fig6"] = self.fig6
        return d


def select(
    tables: Tables,
    *,
    steps: Sequence[int | None] | None = None,
    layers: Sequence[str] | None = None,
    focus_layer: str | None = None,
    per_figure: int = 4,
) -> Selection:
    """Apply the rules of this module's docstring.

    Args:
        steps: (t1, t2, t3) overriding spike detection (None entries keep the detected value).
        layers: restrict Figures 2, 3, 5, 6 to these layers (steps still chosen by the rules).
        focus_layer: the layer of Figures 8-10 (default: embedding).

    Raises:
        AdamscopeError: a named layer is not in the tables.
    """
    known = tables.layer_order()
    for name in [*(layers or []), *([focus_layer] if focus_layer else [])]:
        if name not in known:
            raise AdamscopeError(f"layer {name!r} is not in layers.parquet; layers are {known}")
    cand = _candidates(tables, layers)
    sel = Selection(focus_layer=focus_layer or _focus(known))
    sel.t, sel.spikes = _times(tables, steps)
    sel.t_checkpoint = {k: _snap(tables.steps(), v) for k, v in sel.t.items()}
    sel.fig2_step, sel.fig2_layers = _fig2(tables, cand, sel.spikes, per_figure)
    sel.fig3 = _fig3(cand, tables.thresholds["suppression"], per_figure)
    sel.fig5 = _fig5(cand, tables.thresholds["suppression"], per_figure)
    return sel


def _candidates(tables: Tables, layers: Sequence[str] | None) -> pl.DataFrame:
    thr = tables.thresholds
    df = tables.layers.filter(pl.col("numel") >= thr["min_numel"])
    if "stage" in df.columns:
        df = df.filter(pl.col("stage").is_not_null())
    if layers:
        df = df.filter(pl.col("layer").is_in(list(layers)))
    return df


def _focus(known: list[str]) -> str | None:
    if "embedding" in known:
        return "embedding"
    return known[0] if known else None


def _spread(items: list[str], k: int) -> list[str]:
    """k items evenly spaced over the list (all when it has at most k)."""
    if len(items) <= k:
        return items
    idx = sorted({round(i * (len(items) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]
    return [items[i] for i in idx]


def _in_spike(step: int, spikes: list[dict[str, Any]]) -> bool:
    for s in spikes:
        end = s["end"] if s["end"] is not None else float("inf")
        if s["start"] <= step <= end:
            return True
    return False


def _fig2(
    tables: Tables, cand: pl.DataFrame, spikes: list[dict[str, Any]], k: int
) -> tuple[int | None, list[str]]:
    healthy = cand.filter(pl.col("stage") == "healthy")
    if len(healthy) == 0:
        return None, []
    counts = healthy.group_by("step").agg(pl.len().alias("n")).sort("step")
    best = counts["n"].max()
    tied = counts.filter(pl.col("n") == best)["step"].to_list()
    calm = [s for s in tied if not _in_spike(s, spikes)] or tied
    step = calm[-1]
    names = healthy.filter(pl.col("step") == step).sort("depth")["layer"].to_list()
    return step, _spread(names, k)


def _best_per_layer(df: pl.DataFrame, col: str, *, descending: bool, k: int) -> list[Pair]:
    if len(df) == 0:
        return []
    best = (
        df.sort(col, "step", descending=[descending, False], nulls_last=True)
        .group_by("layer", maintain_order=True)
        .first()
        .head(k)
    )
    return [(r["layer"], int(r["step"])) for r in best.iter_rows(named=True)]


def _fig3(cand: pl.DataFrame, sup: float, k: int) -> list[Pair]:
    rows = cand.filter(pl.col("stage") == "unstable")
    if len(rows) == 0:
        log.info("figure 3: no unstable layer; showing the largest dip(u) among unsuppressed rows")
        rows = cand.filter(pl.col("suppression") >= sup)
    return _best_per_layer(rows.drop_nulls("dip_u"), "dip_u", descending=True, k=k)


def _fig5(cand: pl.DataFrame, sup: float, k: int) -> list[Pair]:
    rows = cand.drop_nulls("suppression").filter(pl.col("suppression").is_not_nan())
    below = rows.filter(pl.col("suppression") < sup)
    if len(below):
        rows = below
    elif len(rows):
        log.info("figure 5: no layer is suppressed; showing the smallest suppression anyway")
    return _best_per_layer(rows, "suppression", descending=False, k=k)


def _times(
    tables: Tables, steps: Sequence[int | None] | None
) -> tuple[dict[str, int | None], list[dict[str, Any]]]:
    t: dict[str, int | None] = {"t1": None, "t2": None, "t3": None}
    spikes: list[dict[str, Any]] = []
    if tables.losses is not None and len(tables.losses):
        from adamscope.logs.spikes import detect

        found = detect(tables.losses)
        t.update({k: found[k] for k in t})
        spikes = found["spikes"]
    if steps is not None:
        if len(steps) > 3:
            raise AdamscopeError(f"--steps takes at most 3 steps (t1, t2, t3), got {len(steps)}")
        for key, value in zip(("t1", "t2", "t3"), steps, strict=False):
            if value is not None:
                t[key] = int(value)
    return t, spikes


def _snap(steps: list[int], t: int | None) -> int | None:
    if t is None or not steps:
        return None
    after = [s for s in steps if s >= t]
    return after[0] if after else steps[-1]
