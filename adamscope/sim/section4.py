"""A synthetic run of the paper's Section 4.2 gradient model through real torch AdamW.

Gradients are `g[i, t] = scale * (rho * b1[i] + b2[i, t])` with b1, b2 = ±1 (Bernoulli(1/2) signs):
`rho` sets the time correlation, `scale` the magnitude relative to eps. The first `n_affected`
layers in depth order follow a schedule of phases that walks the theory's stages (THEORY.md):

    healthy   rho 0.1, scale = base   u and r bell-shaped
    vanishing rho 0.1, scale 1e-10    v decays below eps^2: u spikes at 0, r stays a bell
    primed    rho 10,  scale 1e-10    r turns bimodal, u stays spiked
    unstable  rho 10,  scale = base   eps no longer masks r: u bimodal (u ~ r)
    healthy   ...                     back to a bell

The default schedule runs this cycle twice: the first spike of the synthetic loss recovers, the
second ends flat, as in the paper's Figure 7 (t1 recovered, t2 explosion started, t3 ended flat).
The other layers stay healthy. The parameters do not feed back into the gradients: the point is
real Adam state whose stages are known.

Output (nanoGPT-style): `<out>/step_<N>/ckpt.pt` = {"model", "optimizer", "iter_num",
"model_args"}, `<out>/train_log.jsonl` with one line per step (step, loss, lr, grad_norm and
`grad_norm/<param name>`) and `<out>/schedule.json` (the phases and their last steps).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adamscope.errors import AdamscopeError

HEALTHY_SCALE = 1e-6  # gradient magnitude of healthy layers: 100x eps = 1e-8
VANISHED_SCALE = 1e-10  # 100x below eps: Adam's update is swallowed by eps


@dataclass(frozen=True, kw_only=True)
class Phase:
    """A stretch of steps with one gradient regime for the affected layers."""

    stage: str  # the stage the affected layers are expected to reach by the end of the phase
    steps: int
    rho: float
    scale: float  # multiplies the layer's base scale (1 = healthy magnitude)
    loss: str = "base"  # base | spike | flat: what the synthetic loss does


def default_schedule() -> list[Phase]:
    """Two cycles healthy -> vanishing -> primed -> unstable -> healthy; the 2nd spike ends flat."""
    vanish = VANISHED_SCALE / HEALTHY_SCALE

    def cycle(end: str) -> list[Phase]:
        return [
            Phase(stage="vanishing", steps=240, rho=0.1, scale=vanish),
            Phase(stage="primed", steps=80, rho=10.0, scale=vanish),
            Phase(stage="unstable", steps=40, rho=10.0, scale=1.0, loss="spike"),
            Phase(stage="healthy", steps=100, rho=0.1, scale=1.0, loss=end),
        ]

    return [Phase(stage="healthy", steps=100, rho=0.1, scale=1.0), *cycle("base"), *cycle("flat")]


def param_shapes(*, n_layer: int, d: int, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    """nanoGPT-like parameter names and shapes, in `named_parameters()` order."""
    shapes: list[tuple[str, tuple[int, ...]]] = [("transformer.wte.weight", (vocab, d))]
    for i in range(n_layer):
        shapes += [
            (f"transformer.h.{i}.ln_1.weight", (d,)),
            (f"transformer.h.{i}.attn.c_attn.weight", (d, d)),
            (f"transformer.h.{i}.mlp.c_fc.weight", (2 * d, d)),
        ]
    shapes.append(("transformer.ln_f.weight", (d,)))
    return shapes


def simulate(
    out_dir: Path,
    *,
    schedule: Sequence[Phase] | None = None,
    n_layer: int = 3,
    d: int = 64,
    vocab: int = 128,
    n_affected: int = 2,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    lr: float = 1e-3,
    save_every: int = 20,
    seed: int = 0,
) -> Path:
    """Run the Section 4.2 model through torch.optim.AdamW and save a checkpoint series.

    Args:
        out_dir: run folder to create (must not hold checkpoints already).
        schedule: phases for the affected layers (default: `default_schedule()`).
        n_layer, d, vocab: model size (the default has ~45k elements: seconds on a laptop CPU).
        n_affected: how many layers, in depth order from the embedding, follow the schedule.
        betas, eps, lr: AdamW hyper-parameters (weight decay 0.1 on 2-D tensors, as nanoGPT).
        save_every: checkpoint period in steps; the last step of every phase is saved as well.
        seed: seed of the gradient signs.

    Returns:
        `out_dir`.

    Raises:
        AdamscopeError: `out_dir` already holds step_* folders, or the schedule is empty.
    """
    import torch

    phases = list(schedule) if schedule is not None else default_schedule()
    if not phases or any(p.steps < 1 for p in phases):
        raise AdamscopeError("simulate: the schedule needs at least one phase of >= 1 step")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.glob("step_*")):
        raise AdamscopeError(f"{out_dir}: already holds step_* checkpoints; choose an empty folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    gen = torch.Generator().manual_seed(seed)
    shapes = param_shapes(n_layer=n_layer, d=d, vocab=vocab)
    params = {n: torch.nn.Parameter(torch.zeros(s)) for n, s in shapes}
    layer_of = {n: _layer_index(n, n_layer) for n in params}
    # Deeper layers get larger gradients (x2 per layer), as in the paper's Figure 4.
    base = {n: HEALTHY_SCALE * 2.0 ** layer_of[n] for n in params}
    fixed_sign = {n: _signs(p.shape, gen) for n, p in params.items()}
    decay = [(n, p) for n, p in params.items() if p.dim() >= 2]
    no_decay = [(n, p) for n, p in params.items() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=betas,
        eps=eps,
    )
    ends = _phase_ends(phases)
    run = _Run(params=params, opt=opt, gen=gen, base=base, fixed_sign=fixed_sign)
    run.affected = {n for n in params if layer_of[n] < n_affected}
    loss = _synthetic_loss(phases, seed=seed)
    threads = torch.get_num_threads()
    # Tensors of a few thousand elements: one thread beats contended intra-op parallelism by ~5x.
    torch.set_num_threads(1)
    log_lines: list[str] = []
    try:
        step = 0
        for phase in phases:
            for _ in range(phase.steps):
                step += 1
                norms = run.step(phase)
                row: dict[str, Any] = {"step": step, "loss": loss[step - 1], "lr": lr}
                row["grad_norm"] = math.sqrt(sum(v * v for v in norms.values()))
                row.update({f"grad_norm/{n}": v for n, v in norms.items()})
                log_lines.append(json.dumps(row))
                if step % save_every == 0 or step in ends:
                    args = {"n_layer": n_layer, "d": d, "vocab": vocab}
                    _save(out_dir / f"step_{step}", params, opt, step, **args)
    finally:
        torch.set_num_threads(threads)
    (out_dir / "train_log.jsonl").write_text("\n".join(log_lines) + "\n")
    (out_dir / "schedule.json").write_text(
        json.dumps(
            {
                "n_affected": n_affected,
                "phases": [{**vars(p), "end_step": e} for p, e in zip(phases, ends, strict=True)],
            },
            indent=1,
        )
    )
    return out_dir


@dataclass(kw_only=True)
class _Run:
    """Live parameters and optimizer, stepped with gradients drawn from the Section 4.2 model."""

    params: dict[str, Any]
    opt: Any
    gen: Any
    base: dict[str, float]
    fixed_sign: dict[str, Any]
    affected: set[str] = field(default_factory=set)

    def step(self, phase: Phase) -> dict[str, float]:
        """Set every gradient, take one optimizer step; return each gradient's L2 norm."""
        norms: dict[str, float] = {}
        for n, p in self.params.items():
            hit = n in self.affected
            rho = phase.rho if hit else 0.1
            scale = self.base[n] * (phase.scale if hit else 1.0)
            p.grad = scale * (rho * self.fixed_sign[n] + _signs(p.shape, self.gen))
            norms[n] = float(p.grad.norm())
        self.opt.step()
        return norms


def expected_stage(schedule: Sequence[Phase], step: int) -> str:
    """The stage the affected layers should show at `step` (the stage of the phase holding it)."""
    ends = _phase_ends(list(schedule))
    for phase, end in zip(schedule, ends, strict=True):
        if step <= end:
            return phase.stage
    return schedule[-1].stage


def _phase_ends(phases: Sequence[Phase]) -> list[int]:
    ends, t = [], 0
    for p in phases:
        t += p.steps
        ends.append(t)
    return ends


def _layer_index(name: str, n_layer: int) -> int:
    """Depth index of a simulated parameter: embedding 0, block i -> i + 1, ln_f last."""
    if name.startswith("transformer.wte"):
        return 0
    if name.startswith("transformer.h."):
        return int(name.split(".")[2]) + 1
    return n_layer + 1


def _signs(shape: Any, gen: Any) -> Any:
    import torch

    return torch.randint(0, 2, tuple(shape), generator=gen).float().mul_(2).sub_(1)


def _synthetic_loss(phases: Sequence[Phase], *, seed: int) -> list[float]:
    """A decaying loss with noise; a spike through every unstable phase that recovers or stays flat.

    The spike rises over 5 steps to +2.5 nats; after it, a "base" phase decays back to the trend
    with a time constant of 8 steps and a "flat" phase settles 1.0 above the trend for good.
    """
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    out: list[float] = []
    t, offset, floor, peak = 0, 0.0, 0.0, 2.5
    for phase in phases:
        if phase.loss == "flat":
            floor = 1.0  # the loss never comes back below this plateau
        for k in range(phase.steps):
            t += 1
            trend = 2.0 + 2.5 * math.exp(-t / 250.0)
            if phase.loss == "spike":
                offset = max(offset, peak * min(1.0, (k + 1) / 5.0))
            else:
                offset = floor + (offset - floor) * math.exp(-1 / 8.0)
            out.append(trend + offset + float(rng.normal(0.0, 0.01)))
    return out


def _save(folder: Path, params: dict[str, Any], opt: Any, step: int, **model_args: int) -> None:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "model": {n: p.detach().clone() for n, p in params.items()},
        "optimizer": opt.state_dict(),
        "iter_num": step,
        "model_args": dict(model_args),
    }
    torch.save(ckpt, folder / "ckpt.pt")
