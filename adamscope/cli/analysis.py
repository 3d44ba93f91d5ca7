"""`adamscope analyze` and `adamscope inspect`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adamscope.cli.common import (
    ModelOpt,
    OutOpt,
    PathArg,
    TrustOpt,
    _reader_options,
    command,
)

_NOT_STORED = "formats that do not store it (MLX, HuggingFaceStorageWriter, Orbax/optax)"
Beta1Opt = Annotated[float | None, typer.Option(help=f"beta1 for {_NOT_STORED}.")]
Beta2Opt = Annotated[float | None, typer.Option(help=f"beta2 for {_NOT_STORED}.")]
EpsOpt = Annotated[float | None, typer.Option(help=f"eps for {_NOT_STORED}.")]
BiasCorrectionOpt = Annotated[
    bool | None,
    typer.Option(
        "--bias-correction/--no-bias-correction",
        help="For formats that do not store it (MLX defaults to none).",
    ),
]


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
    beta1: Beta1Opt = None,
    beta2: Beta2Opt = None,
    eps: EpsOpt = None,
    bias_correction: BiasCorrectionOpt = None,
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
    beta1: Beta1Opt = None,
    beta2: Beta2Opt = None,
    eps: EpsOpt = None,
    bias_correction: BiasCorrectionOpt = None,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True)] = 0,
) -> None:
    """Show what is at PATH: format detected, step, hyper-parameters, tensor names/shapes/dtypes, size."""

    from adamscope.api import inspect as run_inspect
    from adamscope.cli.present import inspection_lines

    options = _reader_options(
        model, trust_pickle, beta1=beta1, beta2=beta2, eps=eps, bias_correction=bias_correction
    )
    for line in inspection_lines(run_inspect(path, options=options)):
        typer.echo(line)
