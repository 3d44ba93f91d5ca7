"""A small-scale proxy run: a nanoGPT-style byte-level GPT trained with torch AdamW on the Python
standard library's own sources, saving nanoGPT-style checkpoints that adamscope reads.

Why: the stage verdicts (THEORY.md) are checked on simulated Adam state; this module makes real
training runs that can spike (high lr, large eps near the early layers' gradient RMS, beta2 0.999,
no qk-layernorm — Wortsman et al.; Molybog et al.) and stable controls beside them.

Output of `run_proxy(out_dir, ...)`:
- `step_N/ckpt.pt` = {"model", "optimizer", "iter_num", "model_args", "config"} every `ckpt_every`
  steps (each with the step before it, so adamscope gets exact gradients there), and every step of a
  window around each spike detected online: the `ring` steps before it (kept in memory as a
  keep-last-N ring) and `after` steps after it. Disk stays small.
- `train_log.jsonl`: one line per step: step, loss, lr, grad_norm, `grad_norm/<layer>` (adamscope's
  layer names: embedding, block.<i>, head) and `spike` (1 on the step the online rule fired).
- `run.json`: the configuration, the online spikes and the outcome.

The online rule is adamscope.logs.spikes' start rule: robust z-score of the loss against the median
and MAD of the last `spike_window` losses not inside a spike.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import sysconfig
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from adamscope.errors import AdamscopeError

log = logging.getLogger(__name__)

VOCAB = 256  # bytes


@dataclass(frozen=True, kw_only=True)
class ProxyConfig:
    """Every knob of a proxy run (defaults: a tiny CPU run that stays stable)."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64
    block_size: int = 64
    batch_size: int = 32
    steps: int = 1000
    lr: float = 1e-2
    warmup: int = 100
    schedule: str = "constant"  # constant | cosine (to lr/10) after warm-up
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    embed_decay: bool = False  # weight decay on wte/wpe (nanoGPT decays them; default: no)
    tie: bool = False  # tie lm_head to wte (untied: the embedding only sees input-side gradients)
    qk_layernorm: bool = False
    z_loss: float = 0.0  # coefficient of mean(logsumexp(logits)^2); 0 = off
    grad_clip: float = 0.0  # 0 = no clipping
    seed: int = 0
    data_bytes: int = 4_000_000  # bytes of stdlib sources to train on
    device: str = "cpu"
    threads: int = 1
    ckpt_every: int = 100  # 0: no periodic checkpoints
    pairs: bool = True  # save step N-1 beside every periodic step N (exact gradients there)
    ring: int = 8  # per-step snapshots kept in memory; saved when a spike is detected
    after: int = 8  # steps saved after a detected spike
    max_spike_saves: int = 6  # at most this many spike windows written (disk stays small)
    spike_window: int = 50
    spike_z: float = 6.0
    spike_z_end: float = 3.0
    stop_on_nan: bool = True


def stdlib_bytes(limit: int) -> bytes:
    """The first `limit` bytes of the standard library's .py sources, in sorted path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for p in sorted(root.rglob("*.py")):
        if "site-packages" in p.parts or "test" in p.parts or "tests" in p.parts:
            continue
        try:
            b = p.read_bytes()
        except OSError:
            continue
        chunks.append(b)
        total += len(b)
        if total >= limit:
            break
    data = b"".join(chunks)[:limit]
    if len(data) < 10_000:
        raise AdamscopeError(f"{root}: found only {len(data)} bytes of Python sources to train on")
    return data


def build_model(cfg: ProxyConfig) -> Any:
    """The GPT (nanoGPT parameter names), seeded by cfg.seed."""
    import torch

    torch.manual_seed(cfg.seed)
    return _gpt_class()(
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_embd=cfg.n_embd,
        block_size=cfg.block_size,
        vocab=VOCAB,
        tie=cfg.tie,
        qk_layernorm=cfg.qk_layernorm,
    )


def build_optimizer(model: Any, cfg: ProxyConfig) -> Any:
    """torch AdamW from named parameters (torch >= 2.6 stores `param_names` in the groups).

    Group 0 decays (matrices, and embeddings when cfg.embed_decay), group 1 does not."""
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        is_embed = ".wte." in name or ".wpe." in name
        (decay if p.dim() >= 2 and (cfg.embed_decay or not is_embed) else no_decay).append(
            (name, p)
        )
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def lr_at(step: int, cfg: ProxyConfig) -> float:
    """Learning rate of optimizer step `step` (1-based): linear warm-up, then constant or cosine."""
    if cfg.warmup and step <= cfg.warmup:
        return cfg.lr * step / cfg.warmup
    if cfg.schedule == "cosine":
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))
    return cfg.lr


class OnlineSpikes:
    """Robust z-score of each loss against the trailing calm window (adamscope.logs.spikes' start
    rule); `update` returns True on the step a spike starts."""

    def __init__(self, *, window: int, z_start: float, z_end: float, min_history: int = 10):
        self.calm: deque[float] = deque(maxlen=window)
        self.z_start, self.z_end, self.min_history = z_start, z_end, min_history
        self.inside: tuple[float, float] | None = None  # frozen (median, scale) of a spike

    def update(self, loss: float) -> bool:
        import numpy as np

        if not math.isfinite(loss):
            return False
        if self.inside is not None:
            med, scale = self.inside
            if loss <= med + self.z_end * scale:
                self.inside = None
                self.calm.append(loss)
            return False
        if len(self.calm) >= self.min_history:
            base = np.asarray(self.calm)
            med = float(np.median(base))
            mad = float(np.median(np.abs(base - med)))
            scale = max(1.4826 * mad, 1e-4 * abs(med), 1e-12)
            if (loss - med) / scale > self.z_start:
                self.inside = (med, scale)
                return True
        self.calm.append(loss)
        return False


def run_proxy(out_dir: Path, *, config: ProxyConfig | None = None, **knobs: Any) -> dict[str, Any]:
    """Train one proxy run into `out_dir` (see the module docstring for what is written).

    Args:
        out_dir: created if missing; existing step_N folders are overwritten.
        config: a ProxyConfig; `knobs` override its fields (e.g. lr=3e-2, eps=1e-3).

    Returns:
        The contents of run.json: config, online spikes, checkpoints written, final loss, outcome.

    Raises:
        AdamscopeError: an unknown knob, or no training data.
    """
    import torch

    cfg = config or ProxyConfig()
    try:
        cfg = replace(cfg, **knobs)
    except TypeError as e:
        raise AdamscopeError(f"run_proxy: {e}") from e
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    dev = torch.device(cfg.device)
    data = torch.frombuffer(bytearray(stdlib_bytes(cfg.data_bytes)), dtype=torch.uint8).long()
    model = build_model(cfg).to(dev)
    opt = build_optimizer(model, cfg)
    layer_of = _layer_names(model)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    detector = OnlineSpikes(window=cfg.spike_window, z_start=cfg.spike_z, z_end=cfg.spike_z_end)
    ring: deque[tuple[int, dict]] = deque(maxlen=max(cfg.ring, 1 if cfg.pairs else 0))
    saved: set[int] = set()
    spikes: list[int] = []
    save_until = -1
    outcome, loss_f = "finished", float("nan")
    t0 = time.time()
    with open(out / "train_log.jsonl", "w") as logf:
        for step in range(1, cfg.steps + 1):
            x, y = _batch(data, cfg, gen)
            x, y = x.to(dev), y.to(dev)
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.view(-1, VOCAB), y.view(-1))
            total = loss
            if cfg.z_loss:
                total = loss + cfg.z_loss * torch.logsumexp(logits.float(), -1).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            total.backward()
            norms = _grad_norms(model, layer_of)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            loss_f = float(loss.detach())
            fired = detector.update(loss_f)
            rec = {"step": step, "loss": loss_f, "lr": lr, **norms, "spike": int(fired)}
            logf.write(json.dumps(rec) + "\n")
            snap = _snapshot(model, opt, cfg, step) if ring.maxlen else None
            if fired:
                spikes.append(step)
                if len(spikes) <= cfg.max_spike_saves:
                    for s, sd in ring:
                        _save(out, s, sd, saved)
                    save_until = step + cfg.after
            periodic = cfg.ckpt_every and step % cfg.ckpt_every == 0
            if periodic and cfg.pairs and ring:
                _save(out, *ring[-1], saved)  # step - 1
            if periodic or step <= save_until:
                _save(out, step, snap or _snapshot(model, opt, cfg, step), saved)
            if snap is not None:
                ring.append((step, snap))
            if not math.isfinite(loss_f) and cfg.stop_on_nan:
                outcome = "diverged (non-finite loss)"
                break
    summary = {
        "config": asdict(cfg),
        "outcome": outcome,
        "steps_run": step,
        "final_loss": loss_f,
        "online_spikes": spikes,
        "checkpoints": sorted(saved),
        "seconds": round(time.time() - t0, 1),
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    (out / "run.json").write_text(json.dumps(summary, indent=1) + "\n")
    log.info("%s: %s after %d steps, %d online spikes", out, outcome, step, len(spikes))
    return summary


def _batch(data: Any, cfg: ProxyConfig, gen: Any) -> tuple[Any, Any]:
    import torch

    ix = torch.randint(len(data) - cfg.block_size - 1, (cfg.batch_size,), generator=gen)
    rows = ix[:, None] + torch.arange(cfg.block_size + 1)[None, :]
    chunk = data[rows]
    return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()


def _layer_names(model: Any) -> dict[str, str]:
    from adamscope.tables.layers import assign_layers

    names = [n for n, _ in model.named_parameters()]
    return {n: lo.layer for n, lo in assign_layers(names).items()}


def _grad_norms(model: Any, layer_of: dict[str, str]) -> dict[str, float]:
    """Global and per-layer gradient norms (before clipping), one device sync."""
    import torch

    layers = list(dict.fromkeys(layer_of.values()))
    sq = {lay: [] for lay in layers}
    for n, p in model.named_parameters():
        if p.grad is not None:
            sq[layer_of[n]].append(p.grad.detach().float().pow(2).sum())
    per = torch.stack([torch.stack(v).sum() if v else torch.zeros(()) for v in sq.values()])
    vals = per.sqrt().tolist()
    out = {"grad_norm": float(per.sum().sqrt())}
    out.update({f"grad_norm/{lay}": v for lay, v in zip(layers, vals, strict=True)})
    return out


def _snapshot(model: Any, opt: Any, cfg: ProxyConfig, step: int) -> dict[str, Any]:
    """A nanoGPT-style checkpoint dict, copied to the CPU (the ring must not alias live tensors)."""
    import torch

    def cpu(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj.detach().to("cpu", copy=True)
        if isinstance(obj, dict):
            return {k: cpu(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [cpu(v) for v in obj]
        return copy.copy(obj)

    model_args = {
        k: getattr(cfg, k)
        for k in ("n_layer", "n_head", "n_embd", "block_size", "tie", "qk_layernorm")
    }
    return {
        "model": cpu(model.state_dict()),
        "optimizer": cpu(opt.state_dict()),
        "iter_num": step,
        "model_args": {**model_args, "vocab_size": VOCAB},
        "config": asdict(cfg),
    }


def _save(out: Path, step: int, sd: dict[str, Any], saved: set[int]) -> None:
    import torch

    if step in saved:
        return
    d = out / f"step_{step}"
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / ".ckpt.pt.tmp"
    torch.save(sd, tmp)
    tmp.replace(d / "ckpt.pt")
    saved.add(step)


def _gpt_class() -> type:
    """nanoGPT's architecture (pre-LN blocks, GELU MLP, no biases), defined when torch is imported."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Attention(nn.Module):
        def __init__(self, d: int, n_head: int, qk_layernorm: bool) -> None:
            super().__init__()
            self.n_head = n_head
            self.c_attn = nn.Linear(d, 3 * d, bias=False)
            self.c_proj = nn.Linear(d, d, bias=False)
            hd = d // n_head
            self.q_ln = nn.LayerNorm(hd, bias=False) if qk_layernorm else None
            self.k_ln = nn.LayerNorm(hd, bias=False) if qk_layernorm else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, d = x.shape
            q, k, v = self.c_attn(x).split(d, dim=2)
            q, k, v = (
                z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v)
            )
            if self.q_ln is not None:
                q, k = self.q_ln(q), self.k_ln(k)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).reshape(b, t, d))

    class Block(nn.Module):
        def __init__(self, d: int, n_head: int, qk_layernorm: bool) -> None:
            super().__init__()
            self.ln_1 = nn.LayerNorm(d, bias=False)
            self.attn = Attention(d, n_head, qk_layernorm)
            self.ln_2 = nn.LayerNorm(d, bias=False)
            self.mlp = nn.Sequential()
            self.mlp.add_module("c_fc", nn.Linear(d, 4 * d, bias=False))
            self.mlp.add_module("gelu", nn.GELU())
            self.mlp.add_module("c_proj", nn.Linear(4 * d, d, bias=False))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(
            self,
            *,
            n_layer: int,
            n_head: int,
            n_embd: int,
            block_size: int,
            vocab: int,
            tie: bool,
            qk_layernorm: bool,
        ) -> None:
            super().__init__()
            self.transformer = nn.ModuleDict(
                {
                    "wte": nn.Embedding(vocab, n_embd),
                    "wpe": nn.Embedding(block_size, n_embd),
                    "h": nn.ModuleList(Block(n_embd, n_head, qk_layernorm) for _ in range(n_layer)),
                    "ln_f": nn.LayerNorm(n_embd, bias=False),
                }
            )
            self.lm_head = nn.Linear(n_embd, vocab, bias=False)
            if tie:
                self.lm_head.weight = self.transformer.wte.weight
            for name, p in self.named_parameters():  # nanoGPT's init
                if p.dim() >= 2:
                    std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
                    nn.init.normal_(p, 0.0, std)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            tr = self.transformer
            pos = torch.arange(idx.shape[1], device=idx.device)
            x = tr.wte(idx) + tr.wpe(pos)
            for block in tr.h:
                x = block(x)
            return self.lm_head(tr.ln_f(x))

    return GPT
