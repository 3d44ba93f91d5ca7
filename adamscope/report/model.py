"""What the report says, computed from the tables: summary, stage history, verdict, loss spikes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from adamscope.errors import AdamscopeError
from adamscope.logs.spikes import Spike
from adamscope.tables.model import Tables

log = logging.getLogger(__name__)

SEVERITY = {
    None: -1,
    "too_early": -0.5,
    "healthy": 0,
    "correlated": 0.5,
    "vanishing": 1,
    "primed": 2,
    "unstable": 3,
}
FLAGGED = ("primed", "unstable")


@dataclass(frozen=True)
class Checkpoint:
    index: int
    name: str
    step: int


@dataclass
class LayerHistory:
    """One layer's stage at every checkpoint, and the moments that matter for the verdict."""

    layer: str
    depth: int
    stages: list[str | None]  # per checkpoint index (None: too small, or absent)
    first: dict[str, int] = field(default_factory=dict)  # stage -> first checkpoint index

    @property
    def worst(self) -> str | None:
        return max(self.stages, key=lambda s: SEVERITY[s], default=None)

    @property
    def flagged(self) -> bool:
        return any(s in FLAGGED for s in self.stages)


@dataclass
class RunData:
    tables: Tables
    manifest: dict[str, Any]
    tensors: pl.DataFrame
    layers: pl.DataFrame
    losses: pl.DataFrame | None
    checkpoints: list[Checkpoint]
    histories: list[LayerHistory]  # depth order
    spikes: list[Spike]

    @property
    def tables_dir(self) -> Path | None:
        """The folder the tables came from (None: analysed in memory)."""
        return self.tables.path


def run_data(tables: Tables) -> RunData:
    """What the report needs of a run's tables: checkpoints, per-layer stage histories, spikes.

    Raises:
        AdamscopeError: the layers table has no rows.
    """
    layers, tensors = tables.layers, tables.tensors
    if layers.is_empty():
        where = tables.path / "layers.parquet" if tables.path else "layers table"
        raise AdamscopeError(f"{where}: no rows; nothing to report")
    if not tables.manifest:
        log.warning(
            "%s: no manifest.json; the report's reproduce section will be incomplete",
            tables.path or "tables",
        )
    losses = tables.losses
    if losses is not None:
        losses = losses.filter(pl.col("loss").is_finite()).sort("step")
        losses = losses.unique("step", keep="last", maintain_order=True)
    checkpoints = _checkpoints(layers)
    return RunData(
        tables=tables,
        manifest=tables.manifest,
        tensors=tensors,
        layers=layers,
        losses=losses if losses is not None and losses.height else None,
        checkpoints=checkpoints,
        histories=_histories(layers, checkpoints),
        spikes=find_spikes(losses) if losses is not None else [],
    )


def _checkpoints(layers: pl.DataFrame) -> list[Checkpoint]:
    ck = layers.group_by("checkpoint").agg(pl.col("step").max()).sort(["step", "checkpoint"])
    return [Checkpoint(i, c, int(s)) for i, (c, s) in enumerate(ck.iter_rows())]


def _histories(layers: pl.DataFrame, checkpoints: list[Checkpoint]) -> list[LayerHistory]:
    index = {c.name: c.index for c in checkpoints}
    hist: dict[str, LayerHistory] = {}
    depth = layers.group_by("layer").agg(pl.col("depth").min()).sort(["depth", "layer"])
    for name, d in depth.iter_rows():
        hist[name] = LayerHistory(name, int(d), [None] * len(checkpoints))
    for layer, ckpt, stage in layers.select("layer", "checkpoint", "stage").iter_rows():
        hist[layer].stages[index[ckpt]] = stage
    for h in hist.values():
        for i, s in enumerate(h.stages):
            if s is not None:
                h.first.setdefault(s, i)
    return list(hist.values())


def find_spikes(losses: pl.DataFrame) -> list[Spike]:
    """Loss spikes by the shared rule of `adamscope.logs.spikes` (the one Figures 7-10 use)."""
    from adamscope.logs.spikes import find

    return find(losses)


def default_checkpoint(run: RunData) -> Checkpoint:
    """The first checkpoint with a primed or unstable layer; the last when there is none."""
    firsts = [min(h.first[s] for s in FLAGGED if s in h.first) for h in run.histories if h.flagged]
    return run.checkpoints[min(firsts)] if firsts else run.checkpoints[-1]


def pick_checkpoint(run: RunData, wanted: str | int | None) -> Checkpoint:
    """Resolve a checkpoint given as its path (as in the tables) or step; None picks the default.

    Raises:
        AdamscopeError: no checkpoint has that path or step.
    """
    if wanted is None:
        return default_checkpoint(run)
    for c in run.checkpoints:
        if c.name == str(wanted) or (str(wanted).lstrip("-").isdigit() and c.step == int(wanted)):
            return c
    shown = ", ".join(f"{c.name} (step {c.step})" for c in run.checkpoints[:5])
    raise AdamscopeError(
        f"{run.tables_dir or 'tables'}: no checkpoint {wanted!r} in layers.parquet; try one of: {shown}"
    )


def checkpoint_before(run: RunData, step: int) -> Checkpoint | None:
    """The last checkpoint saved at or before `step`."""
    before = [c for c in run.checkpoints if c.step <= step]
    return before[-1] if before else None


def key_checkpoints(run: RunData, chosen: Checkpoint, *, limit: int = 8) -> list[Checkpoint]:
    """Checkpoints worth a table: the chosen one, first of each stage, before spikes, the last."""
    picks = [chosen]
    for stage in ("vanishing", *FLAGGED):
        firsts = [h.first[stage] for h in run.histories if stage in h.first]
        if firsts:
            picks.append(run.checkpoints[min(firsts)])
    for sp in run.spikes:
        c = checkpoint_before(run, sp.start)
        if c is not None:
            picks.append(c)
    picks.append(run.checkpoints[-1])
    unique = list(dict.fromkeys(picks))[:limit]
    return sorted(unique, key=lambda c: c.index)


TABLE_COLUMNS = [
    # (key, header, kind): kind drives formatting and sorting in report.js
    ("layer", "layer", "text"),
    ("depth", "depth", "int"),
    ("stage", "stage", "stage"),
    ("suppression", "suppression", "num"),
    ("grad_rms", "grad_rms", "sci"),
    ("eps", "eps", "sci"),
    ("grad_over_eps", "grad_rms / eps", "ratio"),
    ("dip_r", "dip(r)", "num"),
    ("null_dip_q99", "null's dip (99%)", "num"),
    ("dip_p_null", "p vs null", "num"),
    ("rho_hat", "rho_hat", "num"),
    ("frac_below_eps", "below eps", "pct"),
    ("u_rms", "rms(u)", "num"),
    ("r_rms", "rms(r)", "num"),
    ("numel", "numel", "int"),
    ("first_flag", "first flagged (step)", "int"),
    ("stage_reason", "why", "text"),
]


def layer_rows(run: RunData, ckpt: Checkpoint) -> list[list[Any]]:
    """The per-layer table of one checkpoint as rows in TABLE_COLUMNS order (JSON-ready)."""
    lay = run.layers.filter(pl.col("checkpoint") == ckpt.name)
    eps = (
        run.tensors.filter(pl.col("checkpoint") == ckpt.name)
        .group_by("layer")
        .agg(pl.col("eps").min())
    )
    lay = lay.join(eps, on="layer", how="left").sort(["depth", "layer"])
    first_flag = {}
    for h in run.histories:
        idx = [h.first[s] for s in FLAGGED if s in h.first]
        if idx:
            first_flag[h.layer] = run.checkpoints[min(idx)].step
    rows = []
    for r in lay.iter_rows(named=True):
        g, e = r["grad_rms"], r["eps"]
        r["grad_over_eps"] = g / e if g is not None and e else None
        r["first_flag"] = first_flag.get(r["layer"])
        rows.append([_json_num(r.get(k)) for k, _, _ in TABLE_COLUMNS])
    return rows


def _json_num(x: Any) -> Any:
    if isinstance(x, float):
        if not np.isfinite(x):
            return None
        return float(f"{x:.5g}")
    return x


def summary(run: RunData) -> dict[str, Any]:
    """Run facts for the summary section (plain values, formatted by the renderer)."""
    last = run.checkpoints[-1]
    t_last = run.tensors.filter(pl.col("checkpoint") == last.name)
    groups = (
        run.tensors.group_by(["beta1", "beta2", "eps", "weight_decay"])
        .agg(pl.col("tensor").n_unique().alias("tensors"))
        .sort("tensors", descending=True)
    )
    lr = run.tensors.select(pl.col("lr").min().alias("lo"), pl.col("lr").max().alias("hi")).row(0)
    steps = [c.step for c in run.checkpoints]
    return {
        "checkpoints": len(run.checkpoints),
        "first_step": steps[0],
        "last_step": steps[-1],
        "interval": int(np.median(np.diff(steps))) if len(steps) > 1 else None,
        "parameters": int(t_last["numel"].sum()) if t_last.height else None,
        "tensors": t_last.height,
        "layers": len(run.histories),
        "dtypes": sorted(x for x in t_last["dtype"].unique().to_list() if x is not None),
        "groups": groups.rows(named=True),
        "lr": lr,
        "loss_steps": run.losses.height if run.losses is not None else 0,
        "spikes": len(run.spikes),
    }
