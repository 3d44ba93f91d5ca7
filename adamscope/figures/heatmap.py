"""Figure 4: log gradient norm per layer (x) and step (y), the log-perplexity strip beside it, and
the stage of every layer over time as a second panel (colour, hatching and letters).

Gradient norm of a layer: logged per-layer norms when the training log has them (exact, the raw
gradient at every logged step); otherwise the estimate sqrt(sum v_hat) = grad_rms * sqrt(numel) at
each checkpoint (Adam's running average of g^2, so it lags a sudden change by ~1/(1 - beta2) steps).
Cells whose gradient RMS (norm / sqrt(numel)) is below eps are hatched '////'.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from adamscope.figures.select import Selection
from adamscope.tables.model import Tables

if TYPE_CHECKING:
    from matplotlib.axes import Axes

log = logging.getLogger(__name__)

STAGE_STYLE = {  # colour (Okabe-Ito, colour-blind safe), hatch, letter
    "too_early": ("#EEEEEE", "", "E"),
    "healthy": ("#009E73", "", "H"),
    "correlated": ("#A6DCC9", "--", "C"),
    "vanishing": ("#56B4E9", "..", "V"),
    "primed": ("#E69F00", "//", "P"),
    "unstable": ("#D55E00", "xx", "U"),
    None: ("#DDDDDD", "", "–"),
}
MAX_LETTER_ROWS = 80  # above this many checkpoints, letters only on runs long enough to read


def layer_numel(tables: Tables) -> dict[str, int]:
    df = tables.layers.group_by("layer").agg(pl.col("numel").max())
    return dict(zip(df["layer"].to_list(), df["numel"].to_list(), strict=True))


def norms_from_logs(tables: Tables) -> pl.DataFrame | None:
    """Logged per-parameter (or per-layer) norms summed to layers: sqrt(sum of squares)."""
    g = tables.grad_norms
    if g is None or len(g) == 0:
        return None
    mapping = dict(
        zip(tables.tensors["tensor"].to_list(), tables.tensors["layer"].to_list(), strict=True)
    )
    known = set(tables.layer_order())
    names = g["name"].unique().to_list()
    unmapped = [n for n in names if n not in mapping and n not in known]
    if unmapped:
        from adamscope.tables.layers import assign_layers

        guessed = assign_layers(unmapped)
        log.warning(
            "grad_norms: %d logged names not in tensors.parquet; layers guessed from the "
            "names (e.g. %s -> %s)",
            len(unmapped),
            unmapped[0],
            guessed[unmapped[0]].layer,
        )
        mapping.update({n: v.layer for n, v in guessed.items()})
    mapping.update({n: n for n in known})
    df = g.with_columns(layer=pl.col("name").replace_strict(mapping, default=None))
    df = df.filter(pl.col("layer").is_in(list(known)))
    return df.group_by("step", "layer").agg(grad_norm=(pl.col("grad_norm") ** 2).sum().sqrt())


def live_norms(tables: Tables) -> pl.DataFrame | None:
    """Layer gradient norms the monitor measured from p.grad (layers.g_norm), where present."""
    if "g_norm" not in tables.layers.columns:
        return None
    rows = tables.layers.filter(pl.col("g_norm").is_not_null())
    if not len(rows):
        return None
    return rows.select("step", "layer", grad_norm=pl.col("g_norm")).with_columns(
        source=pl.lit("exact (monitor, p.grad)")
    )


def exact_norms(tables: Tables) -> pl.DataFrame | None:
    """Exact layer gradient norms recovered from checkpoints one step apart (gradients.parquet)."""
    g = tables.gradients
    if g is None or not len(g):
        return None
    rows = g.filter((pl.col("level") == "layer") & pl.col("exact") & pl.col("consistent"))
    if not len(rows):
        return None
    return rows.select("step", "layer", "grad_norm").with_columns(
        source=pl.lit("exact (consecutive checkpoints)")
    )


def data4(tables: Tables, sel: Selection) -> dict[str, pl.DataFrame]:
    """The frames of Figure 4: 'norms' (step, layer, depth, grad_norm, grad_rms, eps, below_eps,
    source), 'stages' (step, layer, depth, stage) and 'strip' (step, log_perplexity)."""
    depth = {n: i for i, n in enumerate(tables.layer_order())}
    numel = layer_numel(tables)
    logged = norms_from_logs(tables)
    live = live_norms(tables)
    if live is not None:  # the monitor's exact norms of p.grad at every flushed step
        norms = live
    elif logged is not None:
        norms = logged.with_columns(source=pl.lit("logged"))
    else:
        norms = tables.layers.select(
            "step", "layer", grad_norm=pl.col("grad_rms") * pl.col("numel").cast(pl.Float64).sqrt()
        ).with_columns(source=pl.lit("estimate sqrt(sum v_hat)"))
        exact = exact_norms(tables)
        if exact is not None:  # exact where a consecutive pair exists, the estimate elsewhere
            norms = pl.concat(
                [exact, norms.join(exact, on=["step", "layer"], how="anti")], how="vertical_relaxed"
            )
    eps = {n: tables.hyper(n, tables.steps()[-1])["eps"] for n in depth}
    norms = norms.with_columns(
        depth=pl.col("layer").replace_strict(depth, return_dtype=pl.Int64),
        grad_rms=pl.col("grad_norm")
        / pl.col("layer").replace_strict(numel).cast(pl.Float64).sqrt(),
        eps=pl.col("layer").replace_strict(eps, return_dtype=pl.Float64),
    ).with_columns(below_eps=pl.col("grad_rms") < pl.col("eps"))
    norms = norms.select(
        "step", "layer", "depth", "grad_norm", "grad_rms", "eps", "below_eps", "source"
    ).sort("step", "depth")
    stages = tables.layers.select("step", "layer", "depth", "stage").sort("step", "depth")
    if tables.losses is not None and len(tables.losses):
        strip = tables.losses.select("step", log_perplexity=pl.col("loss")).sort("step")
    else:
        strip = pl.DataFrame(schema={"step": pl.Int64, "log_perplexity": pl.Float64})
    return {"norms": norms, "stages": stages, "strip": strip}


def _edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges around sorted steps: midpoints, half a gap beyond each end."""
    if len(steps) == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    mid = (steps[1:] + steps[:-1]) / 2.0
    return np.concatenate(
        [[steps[0] - (mid[0] - steps[0])], mid, [steps[-1] + (steps[-1] - mid[-1])]]
    )


def _runs(values: list[object]) -> list[tuple[int, int, object]]:
    """Run-length encoding: (first index, last index, value)."""
    out: list[tuple[int, int, object]] = []
    for i, v in enumerate(values):
        if out and out[-1][2] == v:
            out[-1] = (out[-1][0], i, v)
        else:
            out.append((i, i, v))
    return out


def figure4(tables: Tables, axes: Sequence[Axes], *, sel: Selection) -> Sequence[Axes]:
    """(strip, heatmap, stages) axes sharing the step axis (time runs downwards)."""
    from matplotlib.patches import Patch, Rectangle

    strip_ax, heat_ax, stage_ax = axes
    data = data4(tables, sel)
    order = tables.layer_order()
    xs = np.arange(len(order) + 1) - 0.5
    norms = data["norms"]
    steps = np.array(sorted(set(norms["step"].to_list())), dtype=float)
    grid = np.full((len(steps), len(order)), np.nan)
    below = np.zeros_like(grid, dtype=bool)
    row_of = {s: i for i, s in enumerate(steps)}
    for r in norms.iter_rows(named=True):
        i, j = row_of[float(r["step"])], order.index(r["layer"])
        if r["grad_norm"] is not None and r["grad_norm"] > 0:
            grid[i, j] = math.log10(r["grad_norm"])
        below[i, j] = bool(r["below_eps"])
    ys = _edges(steps)
    mesh = heat_ax.pcolormesh(xs, ys, grid, cmap="viridis", shading="flat")
    heat_ax.figure.colorbar(
        mesh,
        ax=heat_ax,
        orientation="horizontal",
        pad=0.08,
        fraction=0.04,
        label="log10 gradient norm",
    )
    for j in range(len(order)):
        for a, b, v in _runs(list(below[:, j])):
            if v:
                heat_ax.add_patch(
                    Rectangle(
                        (j - 0.5, ys[a]),
                        1.0,
                        ys[b + 1] - ys[a],
                        fill=False,
                        hatch="////",
                        edgecolor="white",
                        lw=0.0,
                    )
                )
    src = " + ".join(sorted(set(norms["source"].to_list()))) if len(norms) else "-"
    heat_ax.set_title(
        f"Fig. 4 — gradient norm per layer\n({src}; //// : RMS < eps)", fontsize="medium"
    )
    _layer_axis(heat_ax, order)

    strip = data["strip"]
    if len(strip):
        s = strip["step"].to_numpy().astype(float)
        m = strip_ax.pcolormesh(
            [0, 1],
            _edges(s),
            strip["log_perplexity"].to_numpy()[:, None],
            cmap="magma",
            shading="flat",
        )
        strip_ax.figure.colorbar(
            m, ax=strip_ax, orientation="horizontal", pad=0.08, fraction=0.04, label="log ppl"
        )
    else:
        strip_ax.text(
            0.5,
            0.5,
            "no loss log",
            rotation=90,
            ha="center",
            va="center",
            transform=strip_ax.transAxes,
        )
    strip_ax.set_xticks([])
    strip_ax.set_ylabel("step")
    strip_ax.set_title("log\nperplexity", fontsize="medium")

    _stages(stage_ax, data["stages"], order, Rectangle)
    stage_ax.legend(
        handles=[
            Patch(facecolor=c, hatch=h, edgecolor="k", label=f"{letter} {name or 'too small'}")
            for name, (c, h, letter) in STAGE_STYLE.items()
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12),
        ncol=3,
        fontsize="small",
        frameon=False,
    )
    for t_key, t in sel.t.items():
        if t is not None:
            for ax in axes:
                ax.axhline(t, color="red", lw=0.8, ls="--")
            stage_ax.annotate(
                t_key,
                (1.0, t),
                xycoords=("axes fraction", "data"),
                color="red",
                fontsize="small",
                va="center",
                xytext=(2, 0),
                textcoords="offset points",
            )
    if not strip_ax.yaxis_inverted():
        strip_ax.invert_yaxis()
    return axes


def _layer_axis(ax: Axes, order: list[str]) -> None:
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(order, rotation=60, ha="right", fontsize="small")
    ax.set_xlim(-0.5, len(order) - 0.5)
    ax.set_xlabel("layer (depth order)")


def _stages(ax: Axes, stages: pl.DataFrame, order: list[str], rect: type) -> None:
    steps = np.array(sorted(set(stages["step"].to_list())), dtype=float)
    ys = _edges(steps) if len(steps) else np.array([0.0, 1.0])
    row_of = {s: i for i, s in enumerate(steps)}
    table: list[list[object]] = [[None] * len(steps) for _ in order]
    for r in stages.iter_rows(named=True):
        if r["layer"] in order:
            table[order.index(r["layer"])][row_of[float(r["step"])]] = r["stage"]
    min_run = 1 if len(steps) <= MAX_LETTER_ROWS else max(1, len(steps) // 40)
    for j, col in enumerate(table):
        for a, b, v in _runs(col):
            colour, hatch, letter = STAGE_STYLE.get(v, STAGE_STYLE[None])  # type: ignore[arg-type]
            ax.add_patch(
                rect(
                    (j - 0.5, ys[a]),
                    1.0,
                    ys[b + 1] - ys[a],
                    facecolor=colour,
                    hatch=hatch,
                    edgecolor="#333333",
                    lw=0.3,
                )
            )
            if b - a + 1 >= min_run:
                ax.text(
                    j,
                    (ys[a] + ys[b + 1]) / 2,
                    letter,
                    ha="center",
                    va="center",
                    fontsize="small",
                    fontweight="bold",
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0},
                )
    _layer_axis(ax, order)
    ax.set_xlabel("")
    ax.set_title("stage per layer (checkpoints)", fontsize="medium")
