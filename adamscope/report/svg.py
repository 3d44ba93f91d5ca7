"""Inline SVG for the report: the loss curve with spikes over the stage timeline of every layer.

Sizes stay small at any scale: the loss is reduced to min/max per pixel column, and each layer's row
of the stage map is run-length encoded (a stage usually holds for many checkpoints), one path per
stage. Colours come from CSS classes, so light/dark mode and print restyle them; every stage also
has its own pattern and letter, so the figure reads without colour.
"""

from __future__ import annotations

import math
from html import escape

import numpy as np

from adamscope.report.model import LayerHistory, RunData
from adamscope.stats.stages import VERDICTS as STAGES

W = 1000  # viewBox width; the SVG scales to its container
LEFT, RIGHT = 118, 12
LETTER = {
    "too_early": "E",
    "healthy": "H",
    "correlated": "C",
    "vanishing": "V",
    "primed": "P",
    "unstable": "U",
    None: "·",
}
MAX_TIPS = 4000  # hover titles per stage map (each costs ~80 bytes)


def pattern_defs() -> str:
    """One hidden <svg> with a fill pattern per stage, shared by every figure in the page."""
    marks = {
        "too_early": '<circle cx="4" cy="4" r="0.8" class="mark"/>',
        "healthy": "",
        "correlated": '<path d="M0,4 l8,0" class="mark line"/>',
        "vanishing": '<circle cx="2" cy="2" r="1.1" class="mark"/>'
        '<circle cx="6" cy="6" r="1.1" class="mark"/>',
        "primed": '<path d="M-1,1 l2,-2 M0,8 l8,-8 M7,9 l2,-2" class="mark line"/>',
        "unstable": '<path d="M0,0 l8,8 M8,0 l-8,8" class="mark line"/>',
    }
    pats = "".join(
        f'<pattern id="pat-{s}" width="8" height="8" patternUnits="userSpaceOnUse">'
        f'<rect width="8" height="8" class="bg-{s}"/>{marks[s]}</pattern>'
        for s in STAGES
    )
    return f'<svg class="defs" aria-hidden="true" width="0" height="0"><defs>{pats}</defs></svg>'


class _X:
    """Step -> x coordinate."""

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, max(hi, lo + 1)

    def __call__(self, step: float) -> float:
        return LEFT + (step - self.lo) / (self.hi - self.lo) * (W - LEFT - RIGHT)


def _ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step) + 1)]


def _num(x: float) -> str:
    return f"{x:g}" if abs(x) < 1e5 else f"{x:.3g}"


def timeline(run: RunData, *, max_layers_full: int) -> str:
    """Loss (top), worst stage per checkpoint (strip), stage map of layers (bottom); one x axis."""
    steps = [c.step for c in run.checkpoints]
    lo, hi = steps[0], steps[-1]
    if run.losses is not None:
        lo, hi = min(lo, int(run.losses["step"].min())), max(hi, int(run.losses["step"].max()))
    x = _X(lo, hi)
    rows, folded = _rows(run, max_layers_full)
    row_h = max(2.0, min(14.0, 560 / max(len(rows), 1)))
    loss_h, strip_y = 200, 222
    map_y = strip_y + 44
    map_h = row_h * len(rows) + (14 if folded else 0)
    axis_y = map_y + map_h + 4
    height = axis_y + 30
    parts = [
        f'<svg class="timeline" viewBox="0 0 {W} {height:.0f}" role="img" '
        'aria-labelledby="tl-title"><title id="tl-title">Loss curve with spikes, and the stage of '
        "each layer at each checkpoint</title>",
        _loss_panel(run, x, 10, loss_h),
        _strip(run, x, strip_y),
        _stage_map(run, rows, x, map_y, row_h),
    ]
    if folded:
        parts.append(
            f'<text class="note" x="{LEFT}" y="{map_y + row_h * len(rows) + 11:.1f}">'
            f"+ {folded} layers healthy (or not judged) at every checkpoint, not drawn</text>"
        )
    parts.append(_x_axis(x, lo, hi, axis_y))
    for sp in run.spikes:  # spike guides run through every panel
        xs = x(sp.start)
        parts.append(f'<line class="spike" x1="{xs:.1f}" x2="{xs:.1f}" y1="10" y2="{axis_y:.1f}"/>')
    parts.append("</svg>")
    return "".join(parts)


def _rows(run: RunData, max_layers_full: int) -> tuple[list[LayerHistory], int]:
    if len(run.histories) <= max_layers_full:
        return run.histories, 0
    shown = [h for h in run.histories if any(s not in (None, "healthy") for s in h.stages)]
    return shown, len(run.histories) - len(shown)


def _loss_panel(run: RunData, x: _X, top: float, h: float) -> str:
    out = [f'<text class="panel" x="4" y="{top + 12}">loss</text>']
    if run.losses is None:
        out.append(
            f'<text class="note" x="{LEFT + 8}" y="{top + h / 2}">no loss log in the tables '
            "(losses.parquet): spikes cannot be located</text>"
        )
        return "".join(out)
    s = run.losses["step"].to_numpy().astype(np.float64)
    y = run.losses["loss"].to_numpy().astype(np.float64)
    ylo, yhi = float(y.min()), float(y.max())
    pad = (yhi - ylo) * 0.05 or 1.0
    ylo, yhi = ylo - pad, yhi + pad

    def yy(v: np.ndarray | float) -> np.ndarray | float:
        return top + h - (v - ylo) / (yhi - ylo) * h

    # min and max per pixel column keep spikes visible however long the run (steps are sorted)
    xs = _xs(x, s)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(np.floor(xs))) + 1])
    y_min, y_max = np.minimum.reduceat(y, starts), np.maximum.reduceat(y, starts)
    pts = []
    for xc, a, b in zip(xs[starts], yy(y_min), yy(y_max), strict=True):
        pts.append(f"{xc:.1f},{a:.1f}")
        if abs(a - b) >= 0.1:
            pts.append(f"{xc:.1f},{b:.1f}")
    for t in _ticks(ylo, yhi, 4):
        ty = yy(t)
        out.append(
            f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{ty:.1f}" y2="{ty:.1f}"/>'
            f'<text class="tick" x="{LEFT - 4}" y="{ty + 3:.1f}" text-anchor="end">{_num(t)}</text>'
        )
    out.append(f'<polyline class="loss" points="{" ".join(pts)}"/>')
    for k, sp in enumerate(run.spikes, 1):
        px, py = x(sp.peak), yy(sp.peak_value)
        out.append(
            f'<g class="spike-mark"><path d="M{px:.1f},{py - 3:.1f} l-5,-8 h10 z"/>'
            f'<text x="{px + 6 if px < W - 160 else px - 8:.1f}" y="{max(py - 4, top + 10):.1f}" '
            f'text-anchor="{"start" if px < W - 160 else "end"}">'
            f"spike {k} (step {sp.start})</text>"
            f"<title>loss spike {k}: starts at step {sp.start}, peak {sp.peak_value:.4g} at step "
            f"{sp.peak}, baseline {sp.baseline:.4g}, "
            f"{'recovered' if sp.recovered else 'did not recover'}</title></g>"
        )
    return "".join(out)


def _xs(x: _X, s: np.ndarray) -> np.ndarray:
    return LEFT + (s - x.lo) / (x.hi - x.lo) * (W - LEFT - RIGHT)


def _cells(run: RunData, x: _X) -> list[tuple[float, float]]:
    """x-extent of each checkpoint's column: halfway to its neighbours."""
    steps = [c.step for c in run.checkpoints]
    edges = [x(steps[0])]
    edges += [x((a + b) / 2) for a, b in zip(steps, steps[1:], strict=False)]
    edges.append(x(steps[-1]))
    if len(steps) == 1:
        edges = [x(steps[0]) - 4, x(steps[0]) + 4]
    else:
        edges[0] = max(LEFT, edges[0] - (edges[1] - edges[0]))
        edges[-1] = min(W - RIGHT, edges[-1] + (edges[-1] - edges[-2]))
    return list(zip(edges, edges[1:], strict=False))


def _strip(run: RunData, x: _X, y: float) -> str:
    """The worst stage over all layers at each checkpoint, with its letter where there is room."""
    cells = _cells(run, x)
    out = [f'<text class="panel" x="4" y="{y + 12}">worst stage</text>']
    for c, (a, b) in zip(run.checkpoints, cells, strict=True):
        stages = [h.stages[c.index] for h in run.histories]
        worst = max(stages, key=lambda s: -1 if s is None else STAGES.index(s))
        cls = f"s-{worst}" if worst else "s-none"
        out.append(
            f'<rect class="{cls}" x="{a:.1f}" y="{y}" width="{max(b - a, 0.5):.1f}" height="16">'
            f"<title>step {c.step} ({escape(c.name)}): worst stage {worst or 'not judged'}</title>"
            "</rect>"
        )
        if b - a >= 11:
            out.append(
                f'<text class="letter" x="{(a + b) / 2:.1f}" y="{y + 12}" '
                f'text-anchor="middle">{LETTER[worst]}</text>'
            )
    return "".join(out)


def _stage_map(run: RunData, rows: list[LayerHistory], x: _X, y0: float, rh: float) -> str:
    cells = _cells(run, x)
    paths: dict[str | None, list[str]] = {s: [] for s in (*STAGES, None)}
    tips: list[str] = []
    labels: list[str] = []
    every = max(1, math.ceil(10 / rh))  # label every k-th row when rows are thinner than the text
    for r, h in enumerate(rows):
        y = y0 + r * rh
        if r % every == 0:
            labels.append(
                f'<text class="rowlabel" x="{LEFT - 4}" y="{y + min(rh, 10) - 1:.1f}" '
                f'text-anchor="end">{escape(h.layer[-18:])}</text>'
            )
        start = 0
        for i in range(1, len(cells) + 1):
            if i < len(cells) and h.stages[i] == h.stages[start]:
                continue
            a, b = cells[start][0], cells[i - 1][1]
            s = h.stages[start]
            paths[s].append(f"M{a:.1f},{y:.1f}h{b - a:.1f}v{rh - 0.4:.1f}h{a - b:.1f}z")
            tips.append(
                f'<rect x="{a:.1f}" y="{y:.1f}" width="{b - a:.1f}" height="{rh:.1f}"><title>'
                f"{escape(h.layer)}: {s or 'not judged'} from step {run.checkpoints[start].step} "
                f"to {run.checkpoints[i - 1].step}</title></rect>"
            )
            start = i
    out = [f'<text class="panel" x="4" y="{y0 - 9}">stage of each layer</text>', *labels]
    for s, d in paths.items():
        if d:
            out.append(f'<path class="s-{s or "none"}" d="{"".join(d)}"/>')
    if len(tips) <= MAX_TIPS:
        out.append(f'<g class="tips">{"".join(tips)}</g>')
    return "".join(out)


def _x_axis(x: _X, lo: float, hi: float, y: float) -> str:
    out = [f'<line class="axis" x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>']
    for t in _ticks(lo, hi):
        tx = x(t)
        out.append(
            f'<line class="axis" x1="{tx:.1f}" x2="{tx:.1f}" y1="{y:.1f}" y2="{y + 4:.1f}"/>'
            f'<text class="tick" x="{tx:.1f}" y="{y + 15:.1f}" text-anchor="middle">'
            f"{_num(t)}</text>"
        )
    out.append(f'<text class="tick" x="{W - RIGHT}" y="{y + 27:.1f}" text-anchor="end">step</text>')
    return "".join(out)


def legend() -> str:
    """Stage swatches with their pattern, letter and meaning (HTML, not SVG text, so it wraps)."""
    meaning = {
        "too_early": "too early to judge r: independent gradients give a bimodal r this early",
        "healthy": "u and r bell-shaped",
        "correlated": "u ~ r bimodal beyond the null without vanishing/primed before: "
        "sign-descent-like, not the theory's chain",
        "vanishing": "gradients below eps: u spiked at 0, r a bell",
        "primed": "u spiked at 0, r bimodal: the early warning",
        "unstable": "u bimodal like r: eps no longer masks it",
    }
    items = "".join(
        f'<li><svg width="22" height="14" aria-hidden="true"><rect class="s-{s}" width="22" '
        f'height="14"/></svg> <b>{LETTER[s]}</b> {s}: {meaning[s]}</li>'
        for s in STAGES
    )
    extra = "<li><b>·</b> not judged (fewer than min_numel elements)</li>"
    return f'<ul class="legend">{items}{extra}</ul>'
