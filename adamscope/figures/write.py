"""Draw Figures 2-10 from the analysed tables into files: images, the data behind each as CSV, and
selection.json (which layers and steps every figure shows, and the rules' inputs)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl

from adamscope.errors import AdamscopeError
from adamscope.figures import curves, dists, heatmap
from adamscope.figures.select import Selection, select
from adamscope.tables.model import Tables, as_tables

log = logging.getLogger(__name__)

FORMATS = ("png", "svg", "pdf")


@dataclass(frozen=True)
class Spec:
    slug: str
    draw: Callable[..., Any]  # (tables, ax or axes, *, sel) -> Axes
    data: Callable[[Tables, Selection], pl.DataFrame | dict[str, pl.DataFrame]]
    layout: tuple[int, int]  # rows, columns of panels
    size: tuple[float, float]  # inches
    width_ratios: tuple[float, ...] | None = None


SPECS: dict[int, Spec] = {
    2: Spec("healthy_u", dists.figure2, dists.data2, (1, 1), (7, 4.5)),
    3: Spec("bimodal_u", dists.figure3, dists.data3, (1, 1), (7, 4.5)),
    4: Spec("heatmap", heatmap.figure4, heatmap.data4, (1, 3), (11, 8), (0.6, 4, 4)),
    5: Spec("spiked_u", dists.figure5, dists.data5, (1, 2), (12, 4.5)),
    6: Spec("bimodal_r", dists.figure6, dists.data6, (1, 1), (7, 4.5)),
    7: Spec("perplexity", curves.figure7, curves.data7, (1, 1), (9, 4)),
    **{
        n: Spec(
            f"{key}_{curves.T_LABEL[key].replace(' ', '_')}",
            partial(curves.figure_t, key=key),
            partial(curves.data_t, key=key),
            (1, 3),
            (15, 4.2),
        )
        for key, n in curves.FIG_OF_T.items()
    },
}


def write_figures(
    out_dir: Path,
    tables: Tables | Path,
    *,
    only: Iterable[int] | None = None,
    steps: Sequence[int | None] | None = None,
    layers: Sequence[str] | None = None,
    focus_layer: str | None = None,
    formats: Sequence[str] = ("png", "svg"),
    dpi: int = 120,
) -> list[Path]:
    """Write Figures 2-10 (`only` a subset) into `out_dir` as `figN_<name>.<fmt>` plus
    `figN_<name>[.<part>].csv` (the data drawn) and `selection.json`.

    Args:
        steps: (t1, t2, t3) for Figures 7-10 instead of spike detection.
        layers: the layers of Figures 2, 3, 5 and 6. focus_layer: the layer of Figures 8-10.

    Returns:
        Every file written.

    Raises:
        AdamscopeError: missing tables, an unknown figure number, format or layer.

    `tables` is a `Tables` (adamscope.analyze / adamscope.load) or the folder analyze wrote.
    """
    tables = as_tables(tables)
    numbers = sorted(set(only)) if only is not None else sorted(SPECS)
    bad = [n for n in numbers if n not in SPECS]
    if bad:
        raise AdamscopeError(f"unknown figure number(s) {bad}: choose from {sorted(SPECS)}")
    _check_formats(formats)
    sel = select(tables, steps=steps, layers=layers, focus_layer=focus_layer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for n in numbers:
        written += render(n, tables, sel, out_dir / f"fig{n}_{SPECS[n].slug}", formats, dpi=dpi)
    written.append(_write_selection(out_dir, sel))
    return written


def write_heatmap(
    tables: Tables | Path,
    out: Path,
    *,
    steps: Sequence[int | None] | None = None,
    formats: Sequence[str] = ("png", "svg"),
    dpi: int = 120,
) -> list[Path]:
    """Figure 4 alone: `out` is the path without suffix (e.g. OUT/heatmap); one file per format,
    plus `<out>.norms.csv`, `<out>.stages.csv`, `<out>.strip.csv`."""
    tables = as_tables(tables)
    _check_formats(formats)
    sel = select(tables, steps=steps)
    out = Path(out)
    out = out.with_suffix("") if out.suffix.lstrip(".") in FORMATS else out
    out.parent.mkdir(parents=True, exist_ok=True)
    return render(4, tables, sel, out, formats, dpi=dpi)


def render(
    n: int, tables: Tables, sel: Selection, stem: Path, formats: Sequence[str], *, dpi: int
) -> list[Path]:
    """Draw figure `n` and save it as `stem.<fmt>` plus its data as CSV beside it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    spec = SPECS[n]
    rows, cols = spec.layout
    gridspec = {"width_ratios": list(spec.width_ratios)} if spec.width_ratios else None
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=spec.size,
        squeeze=False,
        sharey=(n == 4),
        gridspec_kw=gridspec,
        layout="constrained",
    )
    flat = list(axes.ravel())
    try:
        spec.draw(tables, flat[0] if len(flat) == 1 else flat, sel=sel)
        written = []
        for fmt in formats:
            path = stem.with_name(f"{stem.name}.{fmt}")
            fig.savefig(path, dpi=dpi)
            written.append(path)
    finally:
        plt.close(fig)
    data = spec.data(tables, sel)
    parts = data if isinstance(data, dict) else {"": data}
    for part, df in parts.items():
        path = stem.with_name(f"{stem.name}{'.' + part if part else ''}.csv")
        df.write_csv(path)
        written.append(path)
    return written


def _check_formats(formats: Sequence[str]) -> None:
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise AdamscopeError(f"unknown figure format(s) {bad}: choose from {list(FORMATS)}")


def _write_selection(out_dir: Path, sel: Selection) -> Path:
    path = out_dir / "selection.json"
    path.write_text(json.dumps(sel.to_dict(), indent=1, default=str) + "\n")
    return path
