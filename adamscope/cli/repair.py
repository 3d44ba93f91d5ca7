"""`adamscope repair`: a copy of a checkpoint with chosen layers' Adam state reset and/or eps
changed (docs/repair.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adamscope.cli.common import ModelOpt, command


@command()
def repair(
    ckpt: Annotated[Path, typer.Argument(help="One checkpoint: a file or a checkpoint folder.")],
    out: Annotated[
        Path,
        typer.Option(
            "-o",
            "--out",
            help="New folder (must not exist): the repaired checkpoint under its own name, and "
            "repair.json.",
        ),
    ],
    reset_layers: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated: verdicts (primed, unstable, vanishing, ...: every layer with "
            "that stage), layer names (embedding, block.3, head) or parameter names."
        ),
    ] = None,
    reset: Annotated[
        str, typer.Option(help="exp_avg (m = 0, v kept) or both (m = 0 and v = 0).")
    ] = "both",
    reset_step: Annotated[
        bool,
        typer.Option(
            "--reset-step",
            help="Also set the reset tensors' step to 0 (formats with a step per tensor; "
            "needs --reset both).",
        ),
    ] = False,
    eps: Annotated[float | None, typer.Option(help="New eps for every param group.")] = None,
    from_tables: Annotated[
        Path | None,
        typer.Option(
            help="Take verdicts from the tables `adamscope analyze -o OUT` wrote (e.g. of the "
            "whole run; needed for 'unstable'). Default: analyse CKPT in memory."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would change; write nothing.")
    ] = False,
    model: ModelOpt = None,
    verbose: Annotated[
        int, typer.Option("-v", "--verbose", count=True, help="More log output.")
    ] = 0,
) -> None:
    """Write a copy of CKPT, in its own format and layout, with the chosen layers' exp_avg (and
    exp_avg_sq) set to 0 and/or eps changed; every other byte is copied as it is."""
    from adamscope.config import AnalyzeOptions, ReaderOptions
    from adamscope.repair import RepairOptions
    from adamscope.repair import repair as run_repair

    opts = RepairOptions(
        reset_layers=reset_layers or (),  # type: ignore[arg-type]
        reset=reset,  # type: ignore[arg-type]
        reset_step=reset_step,
        eps=eps,
        from_tables=from_tables,
        dry_run=dry_run,
        analysis=AnalyzeOptions(reader=ReaderOptions(model=model)),
    )
    plan = run_repair(ckpt, out, options=opts)
    for line in plan.lines():
        typer.echo(line)
