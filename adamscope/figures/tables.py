"""The analysed tables a figure draws from, loaded once, and the small queries figures share."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from adamscope.errors import AdamscopeError
from adamscope.logs import LAYER_NORMS_FILE, LOSSES_FILE

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Tables:
    """The output of `adamscope analyze` (tensors, layers, histograms, optional losses)."""

    tensors: pl.DataFrame
    layers: pl.DataFrame
    histograms: pl.DataFrame
    losses: pl.DataFrame | None = None
    grad_norms: pl.DataFrame | None = None  # long form: step, name, grad_norm (logged, exact)
    gradients: pl.DataFrame | None = None  # gradients.parquet: exact, from consecutive checkpoints
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def convention(self) -> str:
        return str(self.manifest.get("options", {}).get("convention", "torch"))

    @property
    def thresholds(self) -> dict[str, float]:
        opts = self.manifest.get("options", {})
        thr = opts.get("thresholds") or self.manifest.get("thresholds") or {}
        return {"suppression": 0.5, "dip": 0.01, "dip_p": 0.01, "min_numel": 1000, **thr}

    def steps(self) -> list[int]:
        """Checkpoint steps present in the layers table, ascending."""
        return sorted(set(self.layers["step"].to_list()))

    def layer_order(self) -> list[str]:
        """Layer names in depth order."""
        df = self.layers.group_by("layer").agg(pl.col("depth").min()).sort("depth", "layer")
        return df["layer"].to_list()

    def hyper(self, layer: str, step: int) -> dict[str, float]:
        """beta1, beta2, eps of a layer at a step (its first tensor's group; else defaults)."""
        rows = self.tensors.filter((pl.col("layer") == layer) & (pl.col("step") == step))
        if len(rows) == 0:
            rows = self.tensors.filter(pl.col("layer") == layer)
        out = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
        if len(rows):
            for k in out:
                v = rows[k][0] if k in rows.columns else None
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    out[k] = float(v)
        return out

    def layer_row(self, layer: str, step: int) -> dict[str, Any] | None:
        rows = self.layers.filter((pl.col("layer") == layer) & (pl.col("step") == step))
        return rows.row(0, named=True) if len(rows) else None

    def density(self, layer: str, step: int, quantity: str) -> pl.DataFrame:
        """Histogram of `quantity` for a layer at a step as (lo, hi, count, density), sorted by lo.

        density = count / (total * width): a probability density in the quantity's unit. Uses the
        layer-level rows; falls back to summing the layer's tensor-level rows bin by bin.
        """
        h = self.histograms.filter(
            (pl.col("layer") == layer) & (pl.col("step") == step) & (pl.col("quantity") == quantity)
        )
        rows = h.filter(pl.col("level") == "layer")
        if len(rows):
            first = rows["checkpoint"][0]  # one checkpoint, should two share a step
            rows = rows.filter(pl.col("checkpoint") == first)
        else:
            rows = h.filter(pl.col("level") == "tensor")
        rows = rows.group_by("lo", "hi").agg(pl.col("count").sum()).sort("lo")
        total = rows["count"].sum() if len(rows) else 0
        if total == 0:
            return pl.DataFrame(
                schema={
                    "lo": pl.Float64,
                    "hi": pl.Float64,
                    "count": pl.Int64,
                    "density": pl.Float64,
                }
            )
        return rows.with_columns(
            density=pl.col("count") / (total * (pl.col("hi") - pl.col("lo")))
        ).select("lo", "hi", "count", "density")


def load_tables(tables_dir: Path) -> Tables:
    """Read the tables written by `adamscope analyze` from `tables_dir`.

    Raises:
        AdamscopeError: layers.parquet, tensors.parquet or histograms.parquet is missing.
    """
    d = Path(tables_dir)
    frames = {}
    for name in ("tensors", "layers", "histograms"):
        p = d / f"{name}.parquet"
        if not p.exists():
            raise AdamscopeError(
                f"{p}: missing; run `adamscope analyze` first (it writes {p.name})"
            )
        frames[name] = pl.read_parquet(p)
    losses = pl.read_parquet(d / LOSSES_FILE) if (d / LOSSES_FILE).exists() else None
    norms = pl.read_parquet(d / LAYER_NORMS_FILE) if (d / LAYER_NORMS_FILE).exists() else None
    grads = pl.read_parquet(d / "gradients.parquet") if (d / "gradients.parquet").exists() else None
    manifest = {}
    if (d / "manifest.json").exists():
        try:
            manifest = json.loads((d / "manifest.json").read_text())
        except json.JSONDecodeError as e:
            raise AdamscopeError(f"{d / 'manifest.json'}: not valid JSON ({e.msg})") from e
    return Tables(**frames, losses=losses, grad_norms=norms, gradients=grads, manifest=manifest)


def stairs(df: pl.DataFrame, column: str = "density") -> tuple[np.ndarray, np.ndarray]:
    """(values, edges) for `Axes.stairs` from sparse bins: gaps between stored bins become zeros."""
    lo, hi, val = (df[c].to_numpy() for c in ("lo", "hi", column))
    edges: list[float] = []
    values: list[float] = []
    for a, b, y in zip(lo, hi, val, strict=True):
        if edges and not math.isclose(edges[-1], a, rel_tol=1e-9, abs_tol=1e-15):
            values.append(0.0)  # an empty stretch between two stored bins
            edges.append(float(a))
        if not edges:
            edges.append(float(a))
        values.append(float(y))
        edges.append(float(b))
    return np.asarray(values), np.asarray(edges)
