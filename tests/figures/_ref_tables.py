"""Tables for figure tests, computed independently of adamscope's engine: float64 numpy on the live
checkpoint contents, Hartigan's dip from `diptest` on every coordinate, the stage rule of THEORY.md.

Only what the figures read is filled in; other schema columns stay null.
"""

from __future__ import annotations

import json
from pathlib import Path

import diptest
import numpy as np
import torch

from adamscope.logs import write_logs
from adamscope.tables import io
from adamscope.tables.layers import assign_layers

THRESHOLDS = {"suppression": 0.5, "dip": 0.01, "dip_p": 0.01, "min_numel": 1000}


def stage(numel: int, sup: float, dip: float, p: float) -> str | None:
    if numel < THRESHOLDS["min_numel"]:
        return None
    bimodal = dip >= THRESHOLDS["dip"] and p < THRESHOLDS["dip_p"]
    if sup < THRESHOLDS["suppression"]:
        return "primed" if bimodal else "vanishing"
    return "unstable" if bimodal else "healthy"


def _checkpoint(path: Path) -> tuple[int, dict[str, dict]]:
    ck = torch.load(path, map_location="cpu", weights_only=True)
    opt = ck["optimizer"]
    out = {}
    for g in opt["param_groups"]:
        for pid, name in zip(g["params"], g["param_names"], strict=True):
            st = opt["state"][pid]
            t = float(st["step"])
            b1, b2 = g["betas"]
            m = st["exp_avg"].double().numpy().ravel() / (1 - b1**t)
            vhat = st["exp_avg_sq"].double().numpy().ravel() / (1 - b2**t)
            den = np.sqrt(vhat)
            out[name] = {
                "u": m / (den + g["eps"]),
                "r": np.where(den > 0, m / np.where(den > 0, den, 1), 0.0),
                "vhat": vhat,
                "hp": {"beta1": b1, "beta2": b2, "eps": g["eps"], "lr": g["lr"]},
                "shape": list(st["exp_avg"].shape),
            }
    return int(ck["iter_num"]), out


def _stats(u: np.ndarray, r: np.ndarray, vhat: np.ndarray, eps: float) -> dict:
    u_rms, r_rms = float(np.sqrt(np.mean(u**2))), float(np.sqrt(np.mean(r**2)))
    dip_u, p_u = diptest.diptest(u)
    dip_r, p_r = diptest.diptest(r)
    sup = u_rms / r_rms if r_rms > 0 else float("nan")
    return {
        "numel": len(u),
        "u_rms": u_rms,
        "r_rms": r_rms,
        "u_std": float(u.std()),
        "r_std": float(r.std()),
        "suppression": sup,
        "grad_rms": float(np.sqrt(np.mean(vhat))),
        "frac_below_eps": float(np.mean(np.sqrt(vhat) < eps)),
        "dip_u": float(dip_u),
        "dip_r": float(dip_r),
        "dip_p_u": float(p_u),
        "dip_p_r": float(p_r),
        "dip_n": len(u),
        "stage": stage(len(u), sup, float(dip_r), float(p_r)),
    }


def _hist(x: np.ndarray, q: str, ident: dict, bound: float) -> list[dict]:
    if q.startswith("log10"):
        edges = np.arange(-16.0, 2.0 + 1e-9, 0.05)
        with np.errstate(divide="ignore"):
            x = np.log10(np.abs(x))
        x = x[np.isfinite(x)]
    else:
        edges = np.linspace(-bound, bound, 257)
    counts, _ = np.histogram(x, bins=edges)
    return [
        {**ident, "quantity": q, "lo": float(edges[i]), "hi": float(edges[i + 1]), "count": int(c)}
        for i, c in enumerate(counts)
        if c
    ]


def build(run: Path, out: Path) -> Path:
    """Write tensors/layers/histograms/losses parquet + manifest.json for a simulated run."""
    t_rows, l_rows, h_rows = [], [], []
    for ck in sorted(run.glob("step_*/ckpt.pt"), key=lambda p: int(p.parent.name[5:])):
        step, tensors = _checkpoint(ck)
        rel = str(ck.relative_to(run))
        layers = assign_layers(list(tensors))
        ident = {"checkpoint": rel, "step": step}
        for name, d in tensors.items():
            lay = layers[name]
            t_rows.append(
                {
                    **ident,
                    "tensor": name,
                    "layer": lay.layer,
                    "depth": lay.depth,
                    "shape": str(d["shape"]),
                    **d["hp"],
                    **_stats(d["u"], d["r"], d["vhat"], d["hp"]["eps"]),
                }
            )
        for lay in sorted({v.layer for v in layers.values()}, key=lambda x: _depth(layers, x)):
            names = [n for n in tensors if layers[n].layer == lay]
            u = np.concatenate([tensors[n]["u"] for n in names])
            r = np.concatenate([tensors[n]["r"] for n in names])
            vhat = np.concatenate([tensors[n]["vhat"] for n in names])
            eps = tensors[names[0]]["hp"]["eps"]
            l_rows.append(
                {
                    **ident,
                    "layer": lay,
                    "depth": _depth(layers, lay),
                    "n_tensors": len(names),
                    **_stats(u, r, vhat, eps),
                }
            )
            hid = {**ident, "level": "layer", "tensor": None, "layer": lay}
            bound = float(np.max(np.abs(r))) * 1.001 + 1e-12
            for q, x in (("u", u), ("r", r), ("log10_abs_u", u), ("log10_abs_r", r)):
                h_rows.extend(_hist(x, q, hid, bound))
    out.mkdir(parents=True, exist_ok=True)
    io.write_parquet(io.frame("tensors", t_rows), out / "tensors.parquet")
    io.write_parquet(io.frame("layers", l_rows), out / "layers.parquet")
    io.write_parquet(io.frame("histograms", h_rows), out / "histograms.parquet")
    write_logs(out, run)
    manifest = {
        "version": "test",
        "inputs": {"path": str(run)},
        "options": {"convention": "torch", "thresholds": THRESHOLDS},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _depth(layers: dict, layer: str) -> int:
    return next(v.depth for v in layers.values() if v.layer == layer)
