"""Small training loops for the monitor tests: the proxy GPT, a live float64 reference of the
live columns taken from the optimizer, gradients and parameters at a step (numpy, not the code
under test), and the comparison with analyze's rows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from adamscope.sim import proxy
from adamscope.tables.schema import LIVE_COLUMNS

# columns analyze and the monitor both compute (ids, names and stage texts aside; lr differs by
# design: a checkpoint stores the scheduler's next lr, the monitor records the one the step used)
SKIP = {"checkpoint", "stage", "stage_reason", "lr", *LIVE_COLUMNS}


def tiny_config(**kw: Any) -> proxy.ProxyConfig:
    return proxy.ProxyConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=8, **kw)


def batches(n: int, cfg: proxy.ProxyConfig, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, proxy.VOCAB, (cfg.batch_size, cfg.block_size + 1), generator=gen)
        for _ in range(n)
    ]


def loss_of(model: Any, x: torch.Tensor) -> torch.Tensor:
    logits = model(x[:, :-1])
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)
    )


def reference(opt: Any, names: dict[int, str], before: dict[int, np.ndarray]) -> dict[str, dict]:
    """float64 numpy values of the live columns per tensor, right after a step: the gradient
    from p.grad, the update from the parameters before and after the step."""
    out = {}
    for group in opt.param_groups:
        b1, b2 = group["betas"]
        for p in group["params"]:
            st = opt.state[p]
            t = float(st["step"])
            g = p.grad.detach().double().numpy().ravel()
            v = st["exp_avg_sq"].detach().double().numpy().ravel()
            m = st["exp_avg"].detach().double().numpy().ravel()
            vhat = v / (1 - b2**t)
            u = (m / (1 - b1**t)) / (np.sqrt(vhat) + group["eps"])
            upd = p.detach().double().numpy().ravel() - before[id(p)]
            ok = vhat > 0
            ratio = g[ok] ** 2 / vhat[ok]
            out[names[id(p)]] = {
                "g_norm": math.sqrt((g * g).sum()),
                "g_rms": math.sqrt((g * g).mean()),
                "g2_vhat_mean": ratio.mean(),
                "g2_vhat_gt1": (ratio > 1).mean(),
                "g2_vhat_q50": np.quantile(ratio, 0.5),
                "g2_vhat_q90": np.quantile(ratio, 0.9),
                "update_rms": math.sqrt((upd * upd).mean()),
                "update_grad_cos": (u * g).sum() / math.sqrt((u * u).sum() * (g * g).sum()),
            }
    return out


def assert_rows_equal(live: pl.DataFrame, post: pl.DataFrame, key: str, rtol: float = 1e-5) -> None:
    """Every statistic of the monitor's rows equals analyze's for the same tensors/layers."""
    assert sorted(live[key].to_list()) == sorted(post[key].to_list())
    a = live.sort(key).to_dicts()
    b = post.sort(key).to_dicts()
    compared = 0
    for ra, rb in zip(a, b, strict=True):
        for col, vb in rb.items():
            if col in SKIP:
                continue
            va = ra[col]
            if isinstance(vb, float) and isinstance(va, float):
                if math.isnan(vb) or math.isnan(va):
                    assert math.isnan(va) and math.isnan(vb), (ra[key], col, va, vb)
                else:
                    assert va == vb or abs(va - vb) <= rtol * max(abs(va), abs(vb)), (
                        ra[key],
                        col,
                        va,
                        vb,
                    )
            else:
                assert va == vb, (ra[key], col, va, vb)
            compared += 1
    assert compared > 20 * len(a)


def save_nanogpt(path: Path, model: Any, opt: Any, cfg: Any, step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(proxy._snapshot(model, opt, cfg, step), path)
