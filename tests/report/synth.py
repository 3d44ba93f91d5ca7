"""Synthetic tables obeying adamscope/tables/schema.py; stages and spikes known by construction.

Layers 0..n_affected-1 walk healthy -> vanishing -> primed -> unstable -> healthy at the checkpoint
indices given by `walk`; the others stay healthy. The loss spikes right after the first unstable
checkpoint. Numbers are plausible for each stage (suppression, dip, grad_rms vs eps), not simulated.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from adamscope.tables import io

EPS = 1e-8
STAGE_STATS = {  # stage -> (grad_rms, suppression, dip_r, dip_p_r, frac_below_eps)
    "healthy": (1e-5, 0.999, 0.002, 0.9, 0.0),
    "vanishing": (1e-10, 0.01, 0.003, 0.8, 1.0),
    "primed": (1e-10, 0.09, 0.24, 0.0, 1.0),
    "unstable": (1e-5, 0.99, 0.24, 0.0, 0.0),
}


@dataclass(frozen=True)
class Walk:
    """Checkpoint indices where affected layers enter each stage (healthy again at `recover`)."""

    vanishing: int = 3
    primed: int = 5
    unstable: int = 7
    recover: int = 9


def stage_at(i: int, walk: Walk) -> str:
    for stage, start in (
        ("healthy", walk.recover),
        ("unstable", walk.unstable),
        ("primed", walk.primed),
    ):
        if i >= start:
            return stage
    return "vanishing" if i >= walk.vanishing else "healthy"


def layer_name(d: int, n_layers: int) -> str:
    return "embedding" if d == 0 else ("head" if d == n_layers - 1 else f"block.{d - 1}")


def make_tables(
    out: Path,
    *,
    n_layers: int = 6,
    n_ckpts: int = 12,
    every: int = 100,
    n_affected: int = 2,
    walk: Walk | None = Walk(),
    loss_steps: int | None = None,
    numel: int = 4096,
    seed: int = 0,
    histograms: bool = True,
) -> Path:
    """Write tensors/layers/histograms/losses.parquet and manifest.json into `out`; return `out`."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    ck_i, d = (
        a.ravel() for a in np.meshgrid(np.arange(n_ckpts), np.arange(n_layers), indexing="ij")
    )
    stages = [
        stage_at(int(i), walk) if walk is not None and depth < n_affected else "healthy"
        for i, depth in zip(ck_i, d, strict=True)
    ]
    g, sup, dip, p, below = (
        np.array(col) for col in zip(*(STAGE_STATS[s] for s in stages), strict=True)
    )
    g = g * 2.0**d * (1 + 0.05 * rng.standard_normal(len(d)))
    r_rms = np.where(dip > 0.1, 0.95, 0.25)
    names = [layer_name(k, n_layers) for k in range(n_layers)]
    steps = (ck_i + 1) * every
    base = pl.DataFrame(
        {
            "checkpoint": [f"step_{s}" for s in steps],
            "step": steps,
            "layer": [names[k] for k in d],
            "depth": d,
            "numel": numel,
            "u_mean": 0.0,
            "u_std": r_rms * sup,
            "u_rms": r_rms * sup,
            "r_mean": 0.0,
            "r_std": r_rms,
            "r_rms": r_rms,
            "suppression": sup,
            "grad_rms": g,
            "frac_below_eps": below,
            "m_norm": g * math.sqrt(numel),
            "v_l1": g * g * numel,
            "zero_v": np.where(np.array(stages) == "primed", 3, 0),
            "nonfinite": 0,
            "dip_u": dip * sup,
            "dip_r": dip,
            "dip_p_u": p,
            "dip_p_r": p,
            "dip_n": numel,
            "stage": stages,
            "n_tensors": 1,
        }
    )
    extra = {
        "tensor": pl.col("layer") + ".weight",
        "shape": pl.lit(f"[{numel}]"),
        "dtype": pl.lit("torch.float32"),
        "beta1": pl.lit(0.9),
        "beta2": pl.lit(0.95),
        "eps": pl.lit(EPS),
        "lr": pl.lit(1e-3),
        "weight_decay": pl.lit(0.1),
    }
    tensors = _conform("tensors", base.with_columns(**extra))
    io.write_parquet(tensors, out / "tensors.parquet")
    layers = _conform("layers", base)
    io.write_parquet(layers, out / "layers.parquet")
    if histograms:
        io.write_parquet(_histograms(layers), out / "histograms.parquet")
    n_loss = loss_steps if loss_steps is not None else n_ckpts * every
    if n_loss:
        steps = np.arange(1, n_loss + 1)
        loss = 2.0 + 2.5 * np.exp(-steps / 250.0) + rng.normal(0, 0.01, n_loss)
        if walk is not None:
            start = (walk.unstable + 1) * every + 1  # just after the first unstable checkpoint
            loss[(steps >= start) & (steps < start + 10)] += 2.5
        df = pl.DataFrame(
            {"step": steps, "loss": loss, "perplexity": np.exp(loss), "source": "train_log.jsonl"}
        )
        io.write_parquet(io.frame("losses", df.to_dicts()), out / "losses.parquet")
    manifest = {
        "tool": "adamscope",
        "version": "0.1.0",
        "created": "2024-01-01T00:00:00Z",
        "inputs": {
            "path": "/data/runs/synthetic",
            "checkpoints": [
                {"path": f"step_{(i + 1) * every}", "format": "nanogpt"} for i in range(n_ckpts)
            ],
        },
        "options": {
            "convention": "torch",
            "chunk_elems": 4194304,
            "dip_sample": 65536,
            "hist_bins": 512,
        },
        "conventions": {"u": "m_hat / (sqrt(v_hat) + eps)", "r": "u with eps = 0", "std": "ddof 0"},
        "thresholds": {"suppression": 0.5, "dip": 0.01, "dip_p": 0.01, "min_numel": 1000},
        "failures": [],
        "environment": {"torch": "2.13.0"},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


HIST_EDGES = np.linspace(-1.2, 1.2, 49)


def _shape(stage: str, quantity: str, numel: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bins of u or r for a stage: a bell (sd 0.25), a spike at 0, or modes at +-0.95."""
    from scipy.special import ndtr

    modes, sd = ((-0.95, 0.95), 0.08) if STAGE_STATS[stage][2] > 0.1 else ((0.0,), 0.25)
    if quantity == "u" and stage in ("vanishing", "primed"):
        modes, sd = (0.0,), 0.01  # eps swallows the update
    cdf = sum(ndtr((HIST_EDGES - m) / sd) for m in modes) / len(modes)
    counts = np.round(np.diff(cdf) * numel).astype(np.int64)
    keep = counts > 0
    return HIST_EDGES[:-1][keep], HIST_EDGES[1:][keep], counts[keep]


def _histograms(layers: pl.DataFrame) -> pl.DataFrame:
    """Layer-level u and r histograms for every row of `layers`, built by joining stage shapes."""
    shapes = []
    for stage in STAGE_STATS:
        for q in ("u", "r"):
            lo, hi, c = _shape(stage, q, 1_000_000)
            shapes.append(pl.DataFrame({"stage": stage, "quantity": q, "lo": lo, "hi": hi, "w": c}))
    bins = pl.concat(shapes)
    rows = layers.select("checkpoint", "step", "layer", "stage", "numel").join(bins, on="stage")
    rows = rows.with_columns(
        level=pl.lit("layer"),
        tensor=pl.lit(None, dtype=pl.Utf8),
        count=(pl.col("w") * pl.col("numel") // 1_000_000).clip(lower_bound=1),
    )
    return rows.select(io.frame("histograms", []).columns).cast(
        dict(io.frame("histograms", []).schema)
    )


def _conform(table: str, df: pl.DataFrame) -> pl.DataFrame:
    """`df` with exactly the schema's columns, in order, with the schema's dtypes."""
    schema = io.frame(table, []).schema
    missing = [pl.lit(None, dtype=t).alias(c) for c, t in schema.items() if c not in df.columns]
    return df.with_columns(missing).select(list(schema)).cast(dict(schema))
