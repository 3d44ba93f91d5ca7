"""The short verdict printed after `analyze`: where the tables are and which layers are in which stage."""

from __future__ import annotations

from typing import Any

import polars as pl


def stage_summary(layers: pl.DataFrame) -> list[str]:
    """One line per checkpoint with a non-healthy layer, plus a total, from layers.parquet."""
    lines: list[str] = []
    if layers.is_empty():
        return lines
    flagged = layers.filter(pl.col("stage").is_in(["vanishing", "primed", "unstable"]))
    for (ckpt, step), grp in flagged.group_by(["checkpoint", "step"], maintain_order=True):
        parts = []
        for stage in ("unstable", "primed", "vanishing"):
            names = grp.filter(pl.col("stage") == stage)["layer"].to_list()
            if names:
                shown = ", ".join(names[:6]) + (f" (+{len(names) - 6})" if len(names) > 6 else "")
                parts.append(f"{stage}: {shown}")
        lines.append(f"  step {step} ({ckpt}): " + "; ".join(parts))
    return lines


def print_summary(result: Any) -> None:
    import typer

    layers = pl.read_parquet(result.tables["layers"])
    tensors = pl.read_parquet(result.tables["tensors"], columns=["tensor"])
    n_ck = len(result.checkpoints)
    typer.echo(
        f"analysed {n_ck} checkpoint{'s' * (n_ck != 1)}, {tensors.height} tensor rows"
        + (f" ({len(result.skipped)} resumed)" if result.skipped else "")
        + f" -> {result.out}/"
    )
    lines = stage_summary(layers)
    if lines:
        typer.echo("layers outside the healthy stage:")
        for line in lines[:30]:
            typer.echo(line)
        if len(lines) > 30:
            typer.echo(f"  ... {len(lines) - 30} more checkpoints (see layers.parquet)")
    else:
        typer.echo("every layer healthy (or too small to judge)")
