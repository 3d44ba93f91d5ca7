"""Helpers of the repair tests: a tiny proxy GPT trained a few steps with torch AdamW, one more
training step, bitwise comparison of state trees, and the check that a failed repair wrote
nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from adamscope.sim import proxy

CFG = proxy.ProxyConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=8)


def batch(gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, proxy.VOCAB, (CFG.batch_size, CFG.block_size + 1), generator=gen)


def loss_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits = model(x[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, proxy.VOCAB), x[:, 1:].reshape(-1))


def trained(steps: int = 13, *, seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The proxy GPT and its AdamW (param_names stored) after `steps` steps."""
    torch.manual_seed(seed)
    model = proxy.build_model(CFG)
    opt = proxy.build_optimizer(model, CFG)
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        step(model, opt, gen)
    return model, opt


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> float:
    """One training step; returns the loss."""
    loss = loss_of(model, batch(gen))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaNs and -0.0 included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a loaded tree by its key path."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out |= leaves(v, f"{prefix}{k}/")
        return out
    if isinstance(tree, list | tuple):
        out = {}
        for i, v in enumerate(tree):
            out |= leaves(v, f"{prefix}{i}/")
        return out
    return {prefix.rstrip("/"): tree}


def differences(a: Any, b: Any) -> set[str]:
    """Key paths whose leaves differ (bitwise for tensors)."""
    la, lb = leaves(a), leaves(b)
    assert la.keys() == lb.keys()
    diff = set()
    for k, x in la.items():
        y = lb[k]
        if isinstance(x, torch.Tensor):
            if not same_bits(x, y):
                diff.add(k)
        elif x != y:
            diff.add(k)
    return diff


def state_keys(sd: dict, names: list[str], *, prefix: str, states: tuple[str, ...]) -> set[str]:
    """Key paths of `states` of the named parameters in an optimizer state_dict under `prefix`."""
    by_name = {}
    for g in sd["param_groups"]:
        by_name.update(zip(g["param_names"], g["params"], strict=True))
    return {f"{prefix}state/{by_name[n]}/{s}" for n in names for s in states}


def listing(folder: Path) -> list[str]:
    """Everything in `folder` (hidden temp folders included), to check that nothing was left."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
