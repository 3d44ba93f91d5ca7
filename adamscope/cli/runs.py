"""`adamscope simulate`, `proxy`, `demo` and `bench`: runs that make checkpoints, and timing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adamscope.cli.common import (
    command,
)


@command()
def simulate(
    out: Annotated[
        Path, typer.Argument(help="Run folder to create (step_N/ckpt.pt + train_log.jsonl).")
    ],
    layers: Annotated[int, typer.Option(help="Transformer blocks of the simulated model.")] = 3,
    affected: Annotated[
        int, typer.Option(help="Layers (from the embedding) that walk the stages.")
    ] = 2,
    save_every: Annotated[int, typer.Option(help="Checkpoint period in steps.")] = 20,
    eps: Annotated[float, typer.Option(help="Adam eps.")] = 1e-8,
    seed: Annotated[int, typer.Option(help="Seed of the gradient signs.")] = 0,
) -> None:
    """Run the paper's Section 4 gradient model through real torch AdamW: a checkpoint series that walks
    healthy -> vanishing -> primed -> unstable -> healthy, with a loss log. No GPU, seconds."""
    from adamscope.sim.section4 import simulate as run_simulate

    path = run_simulate(
        out, n_layer=layers, n_affected=affected, save_every=save_every, eps=eps, seed=seed
    )
    typer.echo(f"simulated run: {path}  (next: adamscope analyze {path})")


@command()
def proxy(
    out: Annotated[
        Path, typer.Argument(help="Run folder to create (step_N/ckpt.pt + train_log.jsonl).")
    ],
    layers: Annotated[int, typer.Option(help="Transformer blocks.")] = 3,
    steps: Annotated[int, typer.Option(help="Training steps.")] = 1000,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-2,
    batch_size: Annotated[int, typer.Option(help="Sequences per batch.")] = 32,
    eps: Annotated[float, typer.Option(help="Adam eps.")] = 1e-8,
    save_every: Annotated[int, typer.Option(help="Checkpoint period in steps.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and batches.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Train a small byte-level GPT on the Python standard library's sources with real AdamW
    (docs/experiments/proxy-spikes.md): checkpoints every --save-every steps and around detected
    loss spikes."""
    from adamscope.sim.proxy import run_proxy

    info = run_proxy(
        out,
        n_layer=layers,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        eps=eps,
        seed=seed,
        ckpt_every=save_every,
        device=device,
    )
    typer.echo(f"proxy run: {out} ({info.get('outcome', 'done')})  (next: adamscope analyze {out})")


@command()
def demo(
    out: Annotated[
        Path, typer.Option("-o", "--out", help="Folder for the run, the tables and report.html.")
    ] = Path("adamscope-demo"),
) -> None:
    """Simulate a run that walks every stage, analyse it, and write its HTML report (seconds, no data needed)."""

    from adamscope.report import demo as run_demo

    html = run_demo(out)
    typer.echo(f"tables: {out / 'tables'}/\nreport: {html}\nopen it in a browser (works offline).")


@command()
def bench(
    params: Annotated[
        str, typer.Option(help="Parameters of the generated nanoGPT-style checkpoint (250M, 1B).")
    ] = "250M",
    device: Annotated[str, typer.Option(help="cpu | cuda | auto: where reductions run.")] = "cpu",
    reps: Annotated[
        int, typer.Option(min=1, help="Interleaved repetitions; medians reported.")
    ] = 3,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="Measure this ckpt.pt instead of a generated one."
        ),
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Keep generated checkpoints here (reused by the next run)."),
    ] = None,
    scale: Annotated[
        list[str] | None,
        typer.Option(
            help="Also time analyze and the floor at these sizes (repeat: --scale 60M ...)."
        ),
    ] = None,
    baseline: Annotated[
        bool,
        typer.Option(help="Measure the hand-written baseline (slow, needs the whole file in RAM)."),
    ] = True,
    monitor: Annotated[
        bool,
        typer.Option(
            "--monitor",
            help="Measure adamscope.monitor's overhead on training step time instead "
            "(blocks of steps without and with it, interleaved).",
        ),
    ] = False,
    monitor_model: Annotated[
        str, typer.Option(help="With --monitor: proxy (CPU-sized) or gpt125m (GPU-sized).")
    ] = "proxy",
    every: Annotated[int, typer.Option(min=1, help="With --monitor: steps between flushes.")] = 10,
    steps: Annotated[
        int, typer.Option(min=1, help="With --monitor: training steps per timed block.")
    ] = 50,
    threads: Annotated[
        int, typer.Option(min=0, help="With --monitor: torch threads for training (0: as set).")
    ] = 1,
    shards: Annotated[
        str | None,
        typer.Option(
            help="Measure many-shard checkpoints instead: ZeRO-3 and DCP at these rank counts "
            "(8,16,32,64), analyze next to ds_to_universal / dcp_to_torch_save."
        ),
    ] = None,
    shard_params: Annotated[
        str, typer.Option(help="With --shards: parameters of every checkpoint.")
    ] = "64M",
    deepspeed_path: Annotated[
        Path | None,
        typer.Option(help="With --shards: a folder holding deepspeed (pip install --target)."),
    ] = None,
) -> None:
    """Measure analyze against the floor (reading every byte) and a hand-written numpy script;
    with --monitor, the live monitor's share of training step time; with --shards, checkpoints
    of many rank files against the frameworks' converters."""
    if monitor:
        from adamscope.perf.monitor_bench import run_monitor_bench

        res = run_monitor_bench(
            model=monitor_model,
            device="cpu" if device == "auto" else device,
            every=every,
            steps=steps,
            reps=reps,
            threads=threads or None,
            say=lambda x: typer.echo(x, err=True),
        )
        typer.echo(res.report())
        return
    if shards:
        from adamscope.perf.bench import parse_count
        from adamscope.perf.shards_bench import parse_ranks, run_shards_bench

        typer.echo(
            run_shards_bench(
                ranks=parse_ranks(shards),
                params=parse_count(shard_params),
                reps=reps,
                workdir=workdir,
                deepspeed_path=deepspeed_path,
                say=lambda x: typer.echo(x, err=True),
            ).report()
        )
        return
    from adamscope.perf.bench import KINDS, parse_count, run_bench

    result = run_bench(
        params=parse_count(params),
        device=device,
        reps=reps,
        workdir=workdir,
        checkpoint=checkpoint,
        sizes=[parse_count(x) for x in scale or []],
        kinds=KINDS if baseline else ("floor", "analyze"),
        say=lambda x: typer.echo(x, err=True),
    )
    typer.echo(result.report())
