"""Synthetic tables that obey adamscope/tables/schema.py, with stages and spikes known by construction.

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
) -> Path:
    """Write tensors/layers/losses.parquet and manifest.json into `out`; return `out`."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    t_rows, l_rows = [], []
    for i in range(n_ckpts):
        step = (i + 1) * every
        ck = f"step_{step}"
        for d in range(n_layers):
            layer = layer_name(d, n_layers)
            stage = stage_at(i, walk) if walk is not None and d < n_affected else "healthy"
            g, sup, dip, p, below = STAGE_STATS[stage]
            g *= 2.0**d * (1 + 0.05 * rng.standard_normal())
            r_rms = 0.95 if dip > 0.1 else 0.25
            stats = {
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
                "zero_v": 3 if stage == "primed" else 0,
                "nonfinite": 0,
                "dip_u": dip * sup,
                "dip_r": dip,
                "dip_p_u": p,
                "dip_p_r": p,
                "dip_n": numel,
                "stage": stage,
            }
            ident = {"checkpoint": ck, "step": step, "layer": layer, "depth": d}
            l_rows.append({**ident, "n_tensors": 1, **stats})
            t_rows.append(
                {
                    **ident,
                    "tensor": f"{layer}.weight",
                    "shape": f"[{numel}]",
                    "dtype": "torch.float32",
                    "beta1": 0.9,
                    "beta2": 0.95,
                    "eps": EPS,
                    "lr": 1e-3,
                    "weight_decay": 0.1,
                    **stats,
                }
            )
    io.write_parquet(io.frame("tensors", t_rows), out / "tensors.parquet")
    io.write_parquet(io.frame("layers", l_rows), out / "layers.parquet")
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
