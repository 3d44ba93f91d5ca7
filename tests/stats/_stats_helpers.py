"""Helpers for the stats tests: live torch Adam runs, the float64 reference, tolerant comparisons."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adamscope.config import StatsConfig
from adamscope.stats.engine import summarize, tensor_state_from_tensors
from adamscope.stats.sketch import TensorSketch
from adamscope.vocab import HyperParams

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
STAT_KEYS = (
    "u_mean",
    "u_std",
    "u_rms",
    "r_mean",
    "r_std",
    "r_rms",
    "suppression",
    "grad_rms",
    "frac_below_eps",
    "m_norm",
    "v_l1",
)
COUNT_KEYS = ("numel", "zero_v", "nonfinite")


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: on a shared 2-core machine OpenMP's second thread mostly waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def truth_module() -> Any:
    """fixtures/truth.py, the independent float64 numpy reference."""
    spec = importlib.util.spec_from_file_location("fixture_truth", FIXTURES / "truth.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def reference(m: torch.Tensor, v: torch.Tensor, hp: HyperParams, step: float, **kw: Any) -> dict:
    """tensor_truth on float64 copies of the exact float32 values the engine reads."""
    vmax = kw.pop("vmax", None)
    return truth_module().tensor_truth(
        m.double().numpy(),
        v.double().numpy(),
        step=step,
        beta1=hp.beta1,
        beta2=hp.beta2,
        eps=hp.eps,
        lr=hp.lr,
        weight_decay=hp.weight_decay,
        vmax=None if vmax is None else vmax.double().numpy(),
        bias_correction=hp.bias_correction,
        eps_inside_sqrt=hp.eps_inside_sqrt,
        **kw,
    )


def sketch_of(
    m: torch.Tensor,
    v: torch.Tensor,
    hp: HyperParams,
    step: float,
    *,
    cfg: StatsConfig | None = None,
    vmax: torch.Tensor | None = None,
    name: str = "w",
) -> TensorSketch:
    ts = tensor_state_from_tensors(name, m, v, step=step, hp=hp, vmax=vmax)
    with one_thread():
        return summarize(ts, cfg or StatsConfig(device="cpu"))


def assert_matches(row: dict, ref: dict, *, rel: float = 1e-5) -> None:
    """Every stats column within `rel`, relative to the quantity's own scale (means: to the rms)."""
    for key in COUNT_KEYS:
        assert row[key] == ref[key], (key, row[key], ref[key])
    for key in STAT_KEYS:
        a, b = row[key], ref[key]
        if isinstance(b, float) and math.isnan(b):
            assert math.isnan(a), (key, a)
            continue
        scale = abs(b)
        if key in ("u_mean", "u_std"):
            scale = max(scale, ref["u_rms"])
        if key in ("r_mean", "r_std"):
            scale = max(scale, ref["r_rms"])
        assert abs(a - b) <= rel * scale + 1e-300, (key, a, b, abs(a - b) / max(scale, 1e-300))


def signs(gen: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=gen).float().mul_(2).sub_(1)


@functools.cache
def adam_run(
    rho: float,
    scale: float,
    n: int = 200_000,
    steps: int = 300,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, float, HyperParams]:
    """Live torch.optim.Adam on g[i,t] = scale (rho b1[i] + b2[i,t]), b ~ +-1 (Molybog et al. 4.2)."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.zeros(n))
    opt = torch.optim.Adam([p], lr=1e-3, betas=betas, eps=eps)
    fixed = signs(gen, (n,)) * rho
    with one_thread():
        for _ in range(steps):
            p.grad = (fixed + signs(gen, (n,))).mul_(scale)
            opt.step()
    st = opt.state[p]
    hp = HyperParams(beta1=betas[0], beta2=betas[1], eps=eps, lr=1e-3, weight_decay=0.0)
    return st["exp_avg"].clone(), st["exp_avg_sq"].clone(), float(st["step"]), hp


def full_r(m: torch.Tensor, v: torch.Tensor, hp: HyperParams, step: float) -> np.ndarray:
    """r in float64 over the whole tensor (torch convention)."""
    md, vd = m.double().numpy(), v.double().numpy()
    bc1, bc2 = 1 - hp.beta1**step, 1 - hp.beta2**step
    return (md / bc1) / np.sqrt(vd / bc2)
