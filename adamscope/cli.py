"""The `adamscope` command line: flags -> options -> a library call; errors -> exit codes."""

from __future__ import annotations

import logging
import sys
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
    typer.echo(f"adamscope: error: {message}", err=True)
    raise typer.Exit(code)


def _run(fn: Any) -> Any:
    from adamscope.errors import AdamscopeError

    try:
        return fn()
    except AdamscopeError as e:
        _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted; finished checkpoints are kept in OUT/.parts (use --resume)", 130)


def _reader_options(model: Path | None, trust_pickle: bool, **kw: Any) -> Any:
    from adamscope.readers.base import ReaderOptions

    if trust_pickle:
        log.warning(
            "--trust-pickle: checkpoint pickles may EXECUTE CODE. Use only on files you trust."
        )
    return ReaderOptions(model=model, trust_pickle=trust_pickle, **kw)


@app.command()
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
    beta1: Annotated[
        float | None, typer.Option(help="beta1 for formats that do not store it (MLX).")
    ] = None,
    beta2: Annotated[
        float | None, typer.Option(help="beta2 for formats that do not store it.")
    ] = None,
    eps: Annotated[float | None, typer.Option(help="eps for formats that do not store it.")] = None,
    trust_pickle: TrustOpt = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar.")] = False,
    verbose: Annotated[
        int, typer.Option("-v", "--verbose", count=True, help="More log output.")
    ] = 0,
) -> None:
    """Stream the Adam state out of checkpoints into tensors/layers/histograms.parquet + manifest.json."""
    _setup_logging(verbose)
    if convention not in ("torch", "paper"):
        _fail(f"--convention must be 'torch' or 'paper', not {convention!r}")

    def go() -> None:
        from adamscope.api import AnalyzeOptions
        from adamscope.api import analyze as run_analyze
        from adamscope.config import StatsConfig
        from adamscope.distributed import init_from_env
        from adamscope.progress import RichProgress

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
            reader=_reader_options(model, trust_pickle, beta1=beta1, beta2=beta2, eps=eps),
            keep_going=keep_going,
            resume=resume,
            tensor_histograms=tensor_histograms,
        )
        with RichProgress(enabled=not quiet and d.is_main) as progress:
            result = run_analyze(path, options=opts, progress=progress)
        if not d.is_main:
            return
        from adamscope.summary import print_summary

        print_summary(result)
        if result.failures:
            for _, err in result.failures:
                typer.echo(f"adamscope: failed: {err}", err=True)
            raise typer.Exit(1)

    _run(go)


@app.command()
def inspect(
    path: PathArg,
    model: ModelOpt = None,
    trust_pickle: TrustOpt = False,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True)] = 0,
) -> None:
    """Show what is at PATH: format detected, step, hyper-parameters, tensor names/shapes/dtypes, size."""
    _setup_logging(verbose)

    def go() -> None:
        from adamscope.inspect import inspect_path

        for line in inspect_path(path, options=_reader_options(model, trust_pickle)):
            typer.echo(line)

    _run(go)


def main() -> None:
    app()
