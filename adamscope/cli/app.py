"""The `adamscope` command line: flags -> options -> a library call; errors -> exit codes."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="Post-hoc forensics of Adam optimizer state: u/r distributions, bimodality, the stages of "
    "Molybog et al.'s theory, gradient-norm heatmaps and reports, streamed out of saved checkpoints.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
log = logging.getLogger("adamscope")

PathArg = Annotated[
    Path,
    typer.Argument(
        help="A checkpoint file, a checkpoint folder, or a run folder holding many checkpoints "
        "(checkpoint-N, step_N, global_stepN, *step=N*.ckpt), analysed in step order."
    ),
]
OutOpt = Annotated[Path, typer.Option("-o", "--out", help="Output folder for tables and manifest.")]
ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model", help="A model state_dict (or model folder) to recover parameter names from."
    ),
]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="DANGEROUS: unpickle with arbitrary globals (can run code from the file). Only for "
        "checkpoints you made yourself.",
    ),
]


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=level, format="adamscope: %(levelname)s: %(message)s", stream=sys.stderr
    )


def _fail(message: str, code: int = 2) -> None:
    message = " ".join(message.split())  # one line, whatever a library or reader put in it
    typer.echo(f"adamscope: error: {message}", err=True)
    raise typer.Exit(code)


def command(name: str | None = None) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a typer command that sets up logging (its `verbose` option, if any) and maps
    AdamscopeError to one line on stderr and its exit code, Ctrl-C to 130."""

    def deco(fn: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> None:
            from adamscope.errors import AdamscopeError

            _setup_logging(int(kwargs.get("verbose", 0) or 0))
            try:
                fn(*args, **kwargs)
            except AdamscopeError as e:
                _fail(str(e), e.exit_code)
            except KeyboardInterrupt:
                typer.echo(
                    "adamscope: error: interrupted; finished checkpoints are kept in OUT/.parts "
                    "(use --resume)",
                    err=True,
                )
                # Every output is already whole (atomic writes), so exit at once: a normal
                # interpreter shutdown can still find a native worker thread mid-task (the null
                # model's Monte Carlo, a read) and abort with "terminate called without an
                # active exception" (seen 2 in 8 Ctrl-C's with a cold null cache).
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(130)

        app.command(name)(run)
        return run

    return deco


def _reader_options(model: Path | None, trust_pickle: bool, **kw: Any) -> Any:
    from adamscope.config import ReaderOptions

    if trust_pickle:
        log.warning(
            "--trust-pickle: checkpoint pickles may EXECUTE CODE. Use only on files you trust."
        )
    return ReaderOptions(model=model, trust_pickle=trust_pickle, **kw)


@command()
def analyze(
    path: PathArg,
    out: OutOpt = Path("adamscope-out"),
    device: Annotated[
        str, typer.Option(help="auto | cpu | cuda | cuda:N: where reductions run.")
    ] = "auto",
    convention: Annotated[
        str,
        typer.Option(
            help="torch (what torch Adam applies) or paper (Molybog et al.'s EMA weights)."
        ),
    ] = "torch",
    chunk: Annotated[
        int, typer.Option(help="Elements per chunk; bounds memory (m, v and temporaries).")
    ] = 1 << 22,
    dip_sample: Annotated[
        int, typer.Option(help="Uniform sample size per tensor for the dip test.")
    ] = 65536,
    bins: Annotated[int, typer.Option(help="Bins of the linear u and r histograms.")] = 512,
    model: ModelOpt = None,
    keep_going: Annotated[
        bool, typer.Option("--keep-going", help="Analyse the other checkpoints when one fails.")
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Skip checkpoints already analysed into OUT (same path, size, mtime)."
        ),
    ] = False,
    tensor_histograms: Annotated[
        bool, typer.Option(help="Store per-tensor histograms as well as per-layer ones.")
    ] = True,
    gradients: Annotated[
        bool,
        typer.Option(
            help="Exact gradients (gradients.parquet) for checkpoints saved one step apart."
        ),
    ] = True,
    beta1: Annotated[
        float | None, typer.Option(help="beta1 for formats that do not store it (MLX).")
    ] = None,
    beta2: Annotated[
        float | None, typer.Option(help="beta2 for formats that do not store it.")
    ] = None,
    eps: Annotated[float | None, typer.Option(help="eps for formats that do not store it.")] = None,
    bias_correction: Annotated[
        bool | None,
        typer.Option(
            "--bias-correction/--no-bias-correction",
            help="For formats that do not store it (MLX defaults to none).",
        ),
    ] = None,
    log_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--log",
            help="Training log(s) for losses.parquet: trainer_state.json, TensorBoard event file/folder, "
            "JSONL or CSV. Default: found in PATH.",
        ),
    ] = None,
    loss_key: Annotated[
        str | None, typer.Option(help="Loss column/key in a JSONL/CSV log.")
    ] = None,
    step_key: Annotated[
        str | None, typer.Option(help="Step column/key in a JSONL/CSV log.")
    ] = None,
    layer_norm_pattern: Annotated[
        str | None,
        typer.Option(
            help="Regex of logged per-layer gradient-norm keys (the exact heatmap source)."
        ),
    ] = None,
    trust_pickle: TrustOpt = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar.")] = False,
    verbose: Annotated[
        int, typer.Option("-v", "--verbose", count=True, help="More log output.")
    ] = 0,
) -> None:
    """Stream the Adam state out of checkpoints into tensors/layers/histograms.parquet + manifest.json."""
    from adamscope.api import AnalyzeOptions
    from adamscope.api import analyze as run_analyze
    from adamscope.cli.progress import RichProgress
    from adamscope.config import StatsConfig
    from adamscope.pipeline.distributed import init_from_env, shutdown

    d = init_from_env(device)

    opts = AnalyzeOptions(
        out=out,
        stats=StatsConfig(
            convention=convention,  # type: ignore[arg-type]
            device=device,
            chunk_elems=chunk,
            hist_bins=bins,
            dip_sample=dip_sample,
        ),
        reader=_reader_options(
            model,
            trust_pickle,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            bias_correction=bias_correction,
        ),
        keep_going=keep_going,
        resume=resume,
        tensor_histograms=tensor_histograms,
        gradients=gradients,
        logs=tuple(log_file or ()),
        loss_key=loss_key,
        step_key=step_key,
        layer_norm_pattern=layer_norm_pattern,
    )
    with RichProgress(enabled=not quiet and d.is_main) as progress:
        result = run_analyze(path, options=opts, progress=progress)
    shutdown()  # after success only: a failed rank must not wait for the others at a barrier
    if not d.is_main:
        return
    from adamscope.cli.present import print_summary

    print_summary(result)
    if result.failures:
        for _, err in result.failures:
            typer.echo(f"adamscope: failed: {' '.join(err.split())}", err=True)
        raise typer.Exit(1)


@command()
def inspect(
    path: PathArg,
    model: ModelOpt = None,
    trust_pickle: TrustOpt = False,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True)] = 0,
) -> None:
    """Show what is at PATH: format detected, step, hyper-parameters, tensor names/shapes/dtypes, size."""

    from adamscope.api import inspect as run_inspect
    from adamscope.cli.present import inspection_lines

    for line in inspection_lines(run_inspect(path, options=_reader_options(model, trust_pickle))):
        typer.echo(line)


TablesArg = Annotated[
    Path, typer.Argument(help="The output folder of `adamscope analyze` (tables + manifest.json).")
]
FormatOpt = Annotated[str, typer.Option("--format", help="Comma-separated: png, svg, pdf.")]


def _ints(text: str | None) -> list[int | None] | None:
    if text is None:
        return None
    try:
        return [int(x) if x.strip() else None for x in text.split(",")]
    except ValueError:
        _fail(f"expected comma-separated integers, got {text!r}")
        raise  # unreachable


@command()
def figures(
    tables: TablesArg,
    out: Annotated[
        Path | None,
        typer.Option("-o", "--out", help="Folder for the figures (default TABLES/figures)."),
    ] = None,
    only: Annotated[
        str | None, typer.Option(help="Figures to draw, e.g. 2,5,6 (default: 2-10).")
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(help="t1,t2,t3 for Figures 7-10 instead of spike detection (blanks allowed)."),
    ] = None,
    layers: Annotated[
        str | None, typer.Option(help="Layers for Figures 2, 3, 5, 6 (comma-separated).")
    ] = None,
    focus_layer: Annotated[
        str | None, typer.Option(help="The layer of Figures 8-10 (default: embedding).")
    ] = None,
    fmt: FormatOpt = "png,svg",
    dpi: Annotated[int, typer.Option(help="Resolution of PNG output.")] = 120,
) -> None:
    """Draw Figures 2-10 of Molybog et al. from the tables (no second pass over the checkpoints)."""

    from adamscope.figures import write_figures

    files = write_figures(
        out or tables / "figures",
        tables,
        only=[x for x in _ints(only) or [] if x is not None] if only else None,
        steps=_ints(steps),
        layers=layers.split(",") if layers else None,
        focus_layer=focus_layer,
        formats=tuple(fmt.split(",")),
        dpi=dpi,
    )
    typer.echo(f"wrote {len(files)} files to {out or tables / 'figures'}/")


@command()
def heatmap(
    tables: TablesArg,
    out: Annotated[
        Path | None,
        typer.Option("-o", "--out", help="Output path without suffix (default TABLES/heatmap)."),
    ] = None,
    steps: Annotated[
        str | None, typer.Option(help="t1,t2,t3 to mark instead of spike detection.")
    ] = None,
    fmt: FormatOpt = "png,svg",
    dpi: Annotated[int, typer.Option(help="Resolution of PNG output.")] = 120,
) -> None:
    """Figure 4: log gradient norm per layer x step beside the loss strip, and the stage of every layer."""

    from adamscope.figures import write_heatmap

    files = write_heatmap(
        tables,
        out or tables / "heatmap",
        steps=_ints(steps),
        formats=tuple(fmt.split(",")),
        dpi=dpi,
    )
    for f in files:
        typer.echo(str(f))


@command()
def report(
    tables: TablesArg,
    out: Annotated[
        Path | None, typer.Option("-o", "--out", help="The HTML file (default TABLES/report.html).")
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            help="Checkpoint (path or step) of the layer table; default: first primed/unstable, else last."
        ),
    ] = None,
    no_figures: Annotated[
        bool, typer.Option("--no-figures", help="Leave the figures out (faster).")
    ] = False,
) -> None:
    """One self-contained HTML page (inline figures, CSS, JS; no network) telling the run's story."""

    from adamscope.report import write_report

    ck: str | int | None = checkpoint
    if checkpoint is not None and checkpoint.isdigit():
        ck = int(checkpoint)
    path = write_report(
        tables, out or tables / "report.html", checkpoint=ck, figures=not no_figures
    )
    typer.echo(f"report: {path}")


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


CkptArg = Annotated[Path, typer.Argument(help="A checkpoint file or folder.")]


@command()
def gradients(
    a: CkptArg,
    b: CkptArg,
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for gradients.parquet.")] = Path(
        "adamscope-out"
    ),
    loss_gradient: Annotated[
        bool,
        typer.Option(
            help="With coupled weight decay (Adam, not AdamW): subtract wd * theta to get the loss gradient."
        ),
    ] = False,
    assume_consecutive: Annotated[
        bool, typer.Option(help="Use the one-step formulas whatever the stored steps say.")
    ] = False,
    model: ModelOpt = None,
    trust_pickle: TrustOpt = False,
) -> None:
    """Exact gradient of B's step from two checkpoints one step apart: grad_norm, update-gradient cosine,
    and a consistency check that tells whether the pair really is consecutive and unmodified."""

    import polars as pl

    from adamscope.cli.present import print_frame
    from adamscope.forensics import GradientOptions, write_gradients

    opts = GradientOptions(
        reader=_reader_options(model, trust_pickle),
        loss_gradient=loss_gradient,
        assume_consecutive=assume_consecutive,
    )
    path = write_gradients(a, b, out, options=opts)
    df = pl.read_parquet(path).filter(pl.col("level") == "layer")
    print_frame(
        df.select(
            "step", "layer", "exact", "grad_norm", "grad_rms", "update_grad_cos", "consistent"
        )
    )
    bad = df.filter(~pl.col("consistent"))["layer"].to_list()
    if bad:
        typer.echo(
            f"warning: the pair fails the consistency check in {', '.join(bad)}: not consecutive, "
            "or the state was modified between the two saves",
            err=True,
        )
    typer.echo(f"-> {path}")


@command()
def diff(
    a: CkptArg,
    b: CkptArg,
    out: Annotated[
        Path | None, typer.Option("-o", "--out", help="Also write diff.parquet into this folder.")
    ] = None,
    stages: Annotated[
        bool, typer.Option(help="Each layer's stage in A and B (one more pass each).")
    ] = True,
    weights: Annotated[
        bool, typer.Option(help="Compare the model weights when the checkpoints hold them.")
    ] = True,
    model: ModelOpt = None,
    trust_pickle: TrustOpt = False,
) -> None:
    """Per layer: the relative change of m, v, u, r and the weights from A to B, and the stage in each."""

    from adamscope.cli.present import print_frame
    from adamscope.forensics import DiffOptions
    from adamscope.forensics import diff as run_diff

    df = run_diff(
        a,
        b,
        options=DiffOptions(
            reader=_reader_options(model, trust_pickle), stages=stages, weights=weights
        ),
    )
    print_frame(df.drop("checkpoint_a", "checkpoint_b"))
    if out is not None:
        from adamscope.tables.io import write_parquet

        write_parquet(df, out / "diff.parquet")
        typer.echo(f"-> {out / 'diff.parquet'}")


@command("moved-first")
def moved_first(
    run: Annotated[
        Path, typer.Argument(help="A run folder of checkpoints (saved at regular intervals).")
    ],
    k: Annotated[
        float, typer.Option(help="A layer moves when its change exceeds k x its own median change.")
    ] = 3.0,
    quantity: Annotated[str, typer.Option(help="m, v, u, r or weight.")] = "v",
    out: Annotated[
        Path | None, typer.Option("-o", "--out", help="Also write moved_first.parquet here.")
    ] = None,
    model: ModelOpt = None,
    trust_pickle: TrustOpt = False,
) -> None:
    """Rank layers by when their change first jumped: which layer moved first around a spike."""

    from adamscope.cli.present import print_frame
    from adamscope.forensics import DiffOptions
    from adamscope.forensics import moved_first as run_moved_first

    df = run_moved_first(
        run,
        k=k,
        quantity=quantity,
        options=DiffOptions(reader=_reader_options(model, trust_pickle)),
    )
    print_frame(df)
    if out is not None:
        from adamscope.tables.io import write_parquet

        write_parquet(df, out / "moved_first.parquet")


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
) -> None:
    """Measure analyze against the floor (reading every byte) and a hand-written numpy script."""
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


def main() -> None:
    app()
