"""Figures 2-10 of Molybog et al. drawn from adamscope's tables: one function per figure
`(tables, ax, *, sel) -> Axes` with no file I/O (dists, curves, heatmap), the selection rules
(select), and the writer (write)."""

from __future__ import annotations

from adamscope.figures.select import Selection, select
from adamscope.figures.write import SPECS, write_figures, write_heatmap

__all__ = [
    "SPECS",
    "Selection",
    "select",
    "write_figures",
    "write_heatmap",
]
