"""What every command shares: the typer app, the `command` decorator (logging, one-line errors and
exit codes), common options."""

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
        "--model",
        help=(
            "Where to recover parameter names from: a model folder (config.json and/or "
            "model.safetensors; for PEFT the base model's), a .safetensors file, or a "
            "torch.save'd state_dict."
        ),
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
