"""`adamscope figures`, `heatmap` and `report`: drawing from the tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adamscope.cli.common import (
    _fail,
    command,
)

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
