"""Figures 2, 3, 5, 6: distributions of u and r over a layer, with the paper's predicted shapes.

Each `figureN(tables, ax, *, sel)` draws into the given Axes (Figure 5 into two) and returns it;
`dataN(tables, sel)` is the frame it draws, which the writer exports beside the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from adamscope.figures import theory
from adamscope.figures.select import Pair, Selection
from adamscope.tables.model import Tables

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_SCHEMA = {
    "layer": pl.Utf8,
    "step": pl.Int64,
    "quantity": pl.Utf8,
    "lo": pl.Float64,
    "hi": pl.Float64,
    "count": pl.Int64,
    "density": pl.Float64,
}


def dist_data(tables: Tables, pairs: Sequence[Pair], quantities: Sequence[str]) -> pl.DataFrame:
    """The histograms behind a distribution figure: a block of bins per (layer, step, quantity)."""
    frames = []
    for layer, step in pairs:
        for q in quantities:
            d = tables.density(layer, step, q)
            if len(d):
                frames.append(
                    d.with_columns(layer=pl.lit(layer), step=pl.lit(step), quantity=pl.lit(q))
                )
    if not frames:
        return pl.DataFrame(schema=_SCHEMA)
    return pl.concat(frames, how="diagonal").select(list(_SCHEMA)).cast(_SCHEMA)  # type: ignore[arg-type]


def data2(tables: Tables, sel: Selection) -> pl.DataFrame:
    if sel.fig2_step is None:
        return pl.DataFrame(schema=_SCHEMA)
    return dist_data(tables, [(n, sel.fig2_step) for n in sel.fig2_layers], ["u"])


def data3(tables: Tables, sel: Selection) -> pl.DataFrame:
    return dist_data(tables, sel.fig3, ["u"])


def data5(tables: Tables, sel: Selection) -> pl.DataFrame:
    return dist_data(tables, sel.fig5, ["u", "r", "log10_abs_u", "log10_abs_r"])


def data6(tables: Tables, sel: Selection) -> pl.DataFrame:
    return dist_data(tables, sel.fig6, ["r"])


def _draw(ax: Axes, df: pl.DataFrame, quantity: str, *, style: str = "-") -> list[tuple[str, int]]:
    """One stairs line per (layer, step) of `quantity`; returns the pairs drawn, in order."""
    drawn = []
    part = df.filter(pl.col("quantity") == quantity)
    for (layer, step), block in part.group_by(["layer", "step"], maintain_order=True):
        values, edges = stairs(block.sort("lo"))
        ax.stairs(values, edges, label=f"{layer} @ step {step}", linestyle=style, linewidth=1.4)
        drawn.append((str(layer), int(step)))  # type: ignore[arg-type]
    return drawn


def _xlim(ax: Axes, df: pl.DataFrame, *, pad: float = 0.05) -> None:
    if len(df) == 0:
        return
    lo, hi = float(df["lo"].min()), float(df["hi"].max())  # type: ignore[arg-type]
    half = max(abs(lo), abs(hi)) * (1 + pad)
    ax.set_xlim(-half, half)


def _empty(ax: Axes, why: str) -> Axes:
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def figure2(tables: Tables, ax: Axes, *, sel: Selection) -> Axes:
    """u over healthy layers at a healthy step, with the Section 4.1 Gaussian."""
    df = data2(tables, sel)
    if len(df) == 0:
        return _empty(ax, "no healthy layer in the tables")
    _draw(ax, df, "u")
    assert sel.fig2_step is not None
    hp = tables.hyper(sel.fig2_layers[0], sel.fig2_step)
    std = theory.gaussian_std(hp["beta1"], hp["beta2"], sel.fig2_step, tables.convention)
    _xlim(ax, df.filter(pl.col("density") > 1e-3 * df["density"].max()))  # type: ignore[operator]
    x = np.linspace(*ax.get_xlim(), 400)
    ax.plot(x, theory.gaussian_pdf(x, std), "k--", lw=1.2, label=f"Gaussian, std {std:.3f} (§4.1)")
    ax.set_title(f"Fig. 2 — u in healthy training (step {sel.fig2_step})")
    ax.set_xlabel("u = m̂ / (√v̂ + ε)")
    ax.set_ylabel("density")
    ax.legend(fontsize="small")
    return ax


def figure3(tables: Tables, ax: Axes, *, sel: Selection) -> Axes:
    """u of the layers with the most bimodal update (unstable stage), with the ±mode markers."""
    return _bimodal(
        ax,
        tables,
        data3(tables, sel),
        "u",
        sel.fig3,
        empty="no layer with a bimodal update in the tables",
        title="Fig. 3 — bimodal u during a stall (unstable stage)",
        xlabel="u = m̂ / (√v̂ + ε)",
    )


def figure5(tables: Tables, axes: Sequence[Axes], *, sel: Selection) -> Sequence[Axes]:
    """u spiked at 0: (a) on r's linear scale, (b) log10|u| against log10|r| (where u really is)."""
    lin, logax = axes
    df = data5(tables, sel)
    if len(df) == 0:
        _empty(lin, "no layer rows with a suppression value")
        _empty(logax, "")
        return axes
    _draw(lin, df, "u")
    _xlim(lin, df.filter(pl.col("quantity") == "r"))
    lin.set_title("Fig. 5a — u concentrated at 0 (on r's scale)")
    lin.set_xlabel("u")
    lin.set_ylabel("density")
    lin.set_yscale("log")
    lin.legend(fontsize="small")
    logax.set_prop_cycle(None)
    _draw(logax, df, "log10_abs_u")
    logax.set_prop_cycle(None)
    _draw(logax, df, "log10_abs_r", style=":")
    logax.set_title("Fig. 5b — log10|u| (solid) vs log10|r| (dotted)")
    logax.set_xlabel("log10 |value|")
    logax.set_ylabel("density per decade")
    for layer, step in sel.fig5:
        row = tables.layer_row(layer, step)
        if row and row.get("suppression") is not None:
            lin.plot([], [], " ", label=f"{layer}: rms(u)/rms(r) = {row['suppression']:.2g}")
    lin.legend(fontsize="small")
    return axes


def figure6(tables: Tables, ax: Axes, *, sel: Selection) -> Axes:
    """r for Figure 5's layers and steps: bimodal, modes at ±1 (torch) or ±b1/√b2 (paper)."""
    return _bimodal(
        ax,
        tables,
        data6(tables, sel),
        "r",
        sel.fig6,
        empty="no layer rows with a suppression value",
        title="Fig. 6 — r = u at ε = 0, same layers and steps as Fig. 5",
        xlabel="r = m̂ / √v̂",
    )


def _bimodal(
    ax: Axes,
    tables: Tables,
    df: pl.DataFrame,
    quantity: str,
    picks: Sequence[Any],
    *,
    empty: str,
    title: str,
    xlabel: str,
) -> Axes:
    """A distribution figure with the theory's modes marked (Figures 3 and 6)."""
    if len(df) == 0:
        return _empty(ax, empty)
    _draw(ax, df, quantity)
    _xlim(ax, df)
    _modes(ax, tables, picks[0])
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize="small")
    return ax


def _modes(ax: Axes, tables: Tables, pair: Pair) -> None:
    hp = tables.hyper(*pair)
    m = theory.mode(hp["beta1"], hp["beta2"], tables.convention)
    label = "±1 (torch)" if tables.convention != "paper" else f"±b1/√b2 = ±{m:.3f} (paper)"
    for x in (-m, m):
        ax.axvline(x, color="k", ls="--", lw=1.0, label=f"theory modes {label}" if x > 0 else None)
    lo, hi = ax.get_xlim()
    half = max(abs(lo), abs(hi), 1.15 * m)
    ax.set_xlim(-half, half)


def stairs(df: pl.DataFrame, column: str = "density") -> tuple[np.ndarray, np.ndarray]:
    """(values, edges) for `Axes.stairs` from sparse bins: gaps between stored bins become zeros."""
    lo, hi, val = (df[c].to_numpy() for c in ("lo", "hi", column))
    edges: list[float] = []
    values: list[float] = []
    for a, b, y in zip(lo, hi, val, strict=True):
        if edges and not math.isclose(edges[-1], a, rel_tol=1e-9, abs_tol=1e-15):
            values.append(0.0)  # an empty stretch between two stored bins
            edges.append(float(a))
        if not edges:
            edges.append(float(a))
        values.append(float(y))
        edges.append(float(b))
    return np.asarray(values), np.asarray(edges)
