"""`adamscope bench --monitor`: the monitor's overhead as a share of training step time, measured
side by side in one process: blocks of training steps without and with the monitor attached,
interleaved (the order rotates each repetition), after a warm-up that pays the one-off costs
(numba compilation, the null model of the run's betas) outside the timing.

A block with the monitor includes waiting for its last flush to be written, so the background
thread's work is counted wherever it competes with training.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODELS = {
    # name: (ProxyConfig overrides, what it is)
    "proxy": ({}, "the proxy GPT (4 x 64, batch 32 x 64 bytes: `adamscope proxy`'s default)"),
    "gpt125m": (
        {"n_layer": 18, "n_head": 12, "n_embd": 768, "block_size": 512, "batch_size": 16},
        "a GPT of 128M parameters (18 x 768, batch 16 x 512)",
    ),
}


@dataclass
class MonitorBench:
    model: str
    params: int
    device: str
    every: int
    steps: int
    reps: int
    plain_s: list[float] = field(default_factory=list)  # per block
    monitored_s: list[float] = field(default_factory=list)
    hook_s: list[float] = field(default_factory=list)  # of which in the training thread
    writer_cpu_s: list[float] = field(default_factory=list)  # CPU time of the writer thread
    flushes: int = 0
    warmup: int = 0  # unmonitored steps before the measurement

    @property
    def step_s(self) -> float:
        return statistics.median(self.plain_s) / self.steps

    @property
    def overhead(self) -> float:
        """Median over repetitions of (monitored - plain) / plain, pairing the blocks of a rep."""
        pairs = zip(self.monitored_s, self.plain_s, strict=True)
        return statistics.median((m - p) / p for m, p in pairs)

    def report(self) -> str:
        hook = statistics.median(self.hook_s) / max(self.flushes, 1)
        writer = statistics.median(self.writer_cpu_s) / max(self.flushes, 1)
        return "\n".join(
            [
                f"monitor overhead: {self.model} ({self.params / 1e6:.1f}M params) on "
                f"{self.device}, every={self.every}, blocks of {self.steps} steps, median of "
                f"{self.reps} interleaved repetitions, after {self.warmup} warm-up steps",
                f"step time without monitor   {self.step_s * 1e3:9.2f} ms",
                "block without / with (s)    "
                + "  ".join(
                    f"{p:.2f}/{m:.2f}" for p, m in zip(self.plain_s, self.monitored_s, strict=True)
                ),
                f"hook time per flush         {hook * 1e3:9.2f} ms (training thread)",
                f"writer CPU per flush        {writer * 1e3:9.2f} ms (its thread: reductions of "
                "the copied state, rows, dips, files)",
                f"writer CPU / training time  {writer / (self.every * self.step_s) * 100:9.2f} % "
                "(what it costs where no core is spare)",
                f"overhead                    {self.overhead * 100:9.2f} % of step time",
            ]
        )


def run_monitor_bench(
    *,
    model: str = "proxy",
    device: str = "cpu",
    every: int = 10,
    steps: int = 50,
    reps: int = 3,
    threads: int | None = None,
    warmup: int | None = None,
    say: Any = None,
) -> MonitorBench:
    """Time `reps` interleaved pairs of `steps`-step blocks, without and with the monitor."""
    import torch

    from adamscope.errors import AdamscopeError
    from adamscope.monitor import attach
    from adamscope.sim import proxy

    if model not in MODELS:
        raise AdamscopeError(f"--monitor-model {model!r}: choose one of {', '.join(MODELS)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise AdamscopeError("--device cuda: CUDA is not available on this machine")
    say = say or (lambda s: None)
    if threads:
        torch.set_num_threads(threads)
    cfg = proxy.ProxyConfig(**MODELS[model][0], device=device)
    net = proxy.build_model(cfg).to(device)
    opt = proxy.build_optimizer(net, cfg)
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, proxy.VOCAB, (cfg.batch_size, cfg.block_size + 1), generator=gen).to(
        device
    )
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def train(n: int) -> None:
        for _ in range(n):
            logits = net(batch[:, :-1])
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
            )
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync()

    result = MonitorBench(
        model=model,
        params=sum(p.numel() for p in net.parameters()),
        device=device,
        every=every,
        steps=steps,
        reps=reps,
    )
    tmp = Path(tempfile.mkdtemp(prefix="adamscope-monbench-"))
    try:
        # past the horizon of the null (270 steps for (0.9, 0.95)) r's null tables stop changing
        # with the step; before it, each new step costs one table (~0.1 s, cached on disk): the
        # start of a run, not the steady state measured here
        from adamscope.stats.null import horizon

        result.warmup = max(horizon(cfg.beta1, cfg.beta2), every) if warmup is None else warmup
        say(f"warm-up: {result.warmup} steps ({result.params / 1e6:.1f}M params on {device})")
        train(result.warmup)
        warm = attach(opt, model=net, out=tmp / "warm", every=every)
        train(2 * every)
        warm.close()
        for rep in range(reps):
            order = ("plain", "monitored") if rep % 2 == 0 else ("monitored", "plain")
            for kind in order:
                mon = None
                t0 = time.perf_counter()
                if kind == "monitored":
                    mon = attach(opt, model=net, out=tmp / f"rep{rep}", every=every)
                train(steps)
                if mon is not None:
                    mon.close()
                dt = time.perf_counter() - t0
                if mon is not None:
                    result.monitored_s.append(dt)
                    result.hook_s.append(mon.seconds)
                    result.writer_cpu_s.append(mon.writer_cpu_s)
                    result.flushes = mon.flushes
                else:
                    result.plain_s.append(dt)
                say(f"  rep {rep + 1}/{reps} {kind}: {dt:.2f} s")
            shutil.rmtree(tmp / f"rep{rep}", ignore_errors=True)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
