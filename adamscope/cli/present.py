"""Text the CLI prints: the verdict after `analyze`, what `inspect` found, small tables."""

from __future__ import annotations

from typing import Any

import polars as pl
import typer

from adamscope.pipeline.inspect import Inspection
from adamscope.tables.model import Tables

FLAGGED_ORDER = ("unstable", "primed", "vanishing")


def stage_summary(layers: pl.DataFrame) -> list[str]:
    """One line per checkpoint with a non-healthy layer, from the layers table."""
    lines: list[str] = []
    if layers.is_empty():
        return lines
    flagged = layers.filter(pl.col("stage").is_in(list(FLAGGED_ORDER)))
    for (ckpt, step), grp in flagged.group_by(["checkpoint", "step"], maintain_order=True):
        parts = []
        for stage in FLAGGED_ORDER:
            names = grp.filter(pl.col("stage") == stage)["layer"].to_list()
            if names:
                shown = ", ".join(names[:6]) + (f" (+{len(names) - 6})" if len(names) > 6 else "")
                parts.append(f"{stage}: {shown}")
        lines.append(f"  step {step} ({ckpt}): " + "; ".join(parts))
    return lines


def print_summary(tables: Tables) -> None:
    n_ck = len(tables.checkpoints)
    typer.echo(
        f"analysed {n_ck} checkpoint{'s' * (n_ck != 1)}, {tables.tensors.height} tensor rows"
        + (f" ({len(tables.skipped)} resumed)" if tables.skipped else "")
        + f" -> {tables.path}/"
    )
    lines = stage_summary(tables.layers)
    if lines:
        typer.echo("layers outside the healthy stage:")
        for line in lines[:30]:
            typer.echo(line)
        if len(lines) > 30:
            typer.echo(f"  ... {len(lines) - 30} more checkpoints (see layers.parquet)")
    else:
        typer.echo("no layer vanishing, primed or unstable")
    for line in context_lines(tables.layers):
        typer.echo(line)


def context_lines(layers: pl.DataFrame) -> list[str]:
    """What the verdicts could not tell: checkpoints too early to judge, bimodal r without the
    theory's chain (docs/stages.md)."""
    out = []
    if layers.is_empty() or "stage" not in layers.columns:
        return out
    early = layers.filter(pl.col("stage") == "too_early")
    if early.height:
        steps = sorted(set(early["step"].to_list()))
        frm = (
            early["judge_from_step"].drop_nulls().max()
            if "judge_from_step" in early.columns
            else None
        )
        out.append(
            f"too early to judge r at step{'s' * (len(steps) > 1)} {', '.join(map(str, steps[:8]))}"
            + (f" (judged from step {frm})" if frm is not None else "")
        )
    corr = layers.filter(pl.col("stage") == "correlated")
    if corr.height:
        names = sorted(set(corr["layer"].to_list()))
        shown = ", ".join(names[:6]) + (f" (+{len(names) - 6})" if len(names) > 6 else "")
        out.append(
            f"correlated (u ~ r bimodal without vanishing/primed before it; not unstable): {shown}"
        )
    return out


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def inspection_lines(insp: Inspection) -> list[str]:
    """The lines `adamscope inspect` prints."""
    out: list[str] = []
    if len(insp.checkpoints) > 1:
        out.append(f"{insp.path}: run folder with {len(insp.checkpoints)} checkpoints")
        out += [f"  {p.name:40s} {fmt}" for p, fmt in insp.checkpoints]
        out.append("details of the last one:")
    info = insp.info
    out.append(f"{info.path}: format {info.format}, {_size(info.bytes_on_disk)} on disk")
    out += [f"  note: {note}" for note in info.notes]
    out.append(f"  step {insp.step}, {len(insp.tensors)} tensors, {insp.n_params:,} parameters")
    for g in insp.groups:
        out.append(
            f"  group: betas=({g.beta1}, {g.beta2}) eps={g.eps} lr={g.lr} "
            f"weight_decay={g.weight_decay}"
            + (" amsgrad" if g.amsgrad else "")
            + ("" if g.bias_correction else " no-bias-correction")
            + f"  [{g.n_tensors} tensors]"
        )
    width = min(max((len(t.name) for t in insp.tensors), default=10), 70)
    out += [f"  {t.name:{width}s} {str(list(t.shape)):>18s} {t.dtype}" for t in insp.tensors]
    return out


def print_frame(df: Any, *, rows: int = 60) -> None:
    with pl.Config(tbl_rows=rows, tbl_cols=-1, tbl_width_chars=160, tbl_hide_dataframe_shape=True):
        typer.echo(str(df))
