"""Figures 7-10: the perplexity curve with t1, t2, t3, and u / r of one layer around each t."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import polars as pl

from adamscope.figures import dists
from adamscope.figures.select import Selection
from adamscope.tables.model import Tables

if TYPE_CHECKING:
    from matplotlib.axes import Axes

T_KEYS = ("t1", "t2", "t3")
T_LABEL = {"t1": "recovered", "t2": "explosion started", "t3": "ended flat"}
FIG_OF_T = {"t1": 8, "t2": 9, "t3": 10}


def data7(tables: Tables, sel: Selection) -> pl.DataFrame:
    if tables.losses is None:
        return pl.DataFrame(schema={"step": pl.Int64, "loss": pl.Float64, "perplexity": pl.Float64})
    return tables.losses.select("step", "loss", "perplexity").sort("step")


def figure7(tables: Tables, ax: Axes, *, sel: Selection) -> Axes:
    """Perplexity over the whole log; t1, t2, t3 as red vertical lines."""
    df = data7(tables, sel)
    if len(df) == 0:
        return dists._empty(ax, "no training log (losses.parquet)")
    ax.plot(df["step"], df["perplexity"], lw=1.0, color="C0")
    for k in T_KEYS:
        t = sel.t.get(k)
        if t is not None:
            ax.axvline(t, color="red", lw=1.2)
            ax.annotate(
                f"{k} = {t}\n{T_LABEL[k]}",
                (t, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -3),
                textcoords="offset points",
                va="top",
                fontsize="small",
                color="red",
            )
    ax.set_yscale("log")
    ax.set_title("Fig. 7 — training perplexity with t1, t2, t3")
    ax.set_xlabel("step")
    ax.set_ylabel("perplexity = exp(loss)")
    return ax


def window(tables: Tables, sel: Selection) -> int:
    """Half-width in steps of the perplexity panels of Figures 8-10: 10% of the log, at least 20."""
    if tables.losses is None or len(tables.losses) == 0:
        return 20
    span = int(tables.losses["step"].max()) - int(tables.losses["step"].min())  # type: ignore[arg-type]
    return max(20, span // 10)


def data_t(tables: Tables, sel: Selection, key: str) -> pl.DataFrame:
    """Behind Figures 8-10: the perplexity around t (quantity 'perplexity', lo = hi = step,
    density = perplexity) and u, r histograms of the focus layer at the checkpoint used for t."""
    t, ck = sel.t.get(key), sel.t_checkpoint.get(key)
    frames = []
    if t is not None and tables.losses is not None and len(tables.losses):
        w = window(tables, sel)
        ppl = tables.losses.filter((pl.col("step") - t).abs() <= w).select(
            layer=pl.lit(None, pl.Utf8),
            step=pl.col("step"),
            quantity=pl.lit("perplexity"),
            lo=pl.col("step").cast(pl.Float64),
            hi=pl.col("step").cast(pl.Float64),
            count=pl.lit(None, pl.Int64),
            density=pl.col("perplexity"),
        )
        frames.append(ppl)
    if ck is not None and sel.focus_layer is not None:
        frames.append(dists.dist_data(tables, [(sel.focus_layer, ck)], ["u", "r"]))
    if not frames:
        return pl.DataFrame(schema=dists._SCHEMA)
    return pl.concat(frames, how="vertical_relaxed")


def figure_t(tables: Tables, axes: Sequence[Axes], *, sel: Selection, key: str) -> Sequence[Axes]:
    """Figure 8 (t1), 9 (t2) or 10 (t3): (a) perplexity around t, (b) u, (c) r of the layer."""
    pax, uax, rax = axes
    n = FIG_OF_T[key]
    t, ck, layer = sel.t.get(key), sel.t_checkpoint.get(key), sel.focus_layer
    df = data_t(tables, sel, key)
    if t is None or len(df) == 0:
        for ax in axes:
            dists._empty(ax, f"no {key} ({T_LABEL[key]}): no such loss spike; set it with --steps")
        return axes
    p = df.filter(pl.col("quantity") == "perplexity")
    pax.plot(p["step"], p["density"], lw=1.0)
    pax.axvline(t, color="red", lw=1.2, label=f"{key} = {t}")
    if ck is not None and ck != t:
        pax.axvline(ck, color="red", ls=":", lw=1.0, label=f"checkpoint {ck}")
    pax.set_yscale("log")
    pax.set_title(f"Fig. {n}a — perplexity around {key} ({T_LABEL[key]})")
    pax.set_xlabel("step")
    pax.set_ylabel("perplexity")
    pax.legend(fontsize="small")
    for ax, q, name in ((uax, "u", "u = m̂ / (√v̂ + ε)"), (rax, "r", "r = m̂ / √v̂")):
        dists._draw(ax, df, q)
        dists._xlim(ax, df.filter(pl.col("quantity") == "r"))
        ax.set_title(f"Fig. {n}{'b' if q == 'u' else 'c'} — {q} over {layer} @ step {ck}")
        ax.set_xlabel(name)
        ax.set_ylabel("density")
    dists._modes(rax, tables, (layer, ck))  # type: ignore[arg-type]
    row = tables.layer_row(layer, ck) if layer is not None and ck is not None else None
    if row:
        stage = row.get("stage") or "no stage"
        box = {"facecolor": "white", "edgecolor": "0.7", "alpha": 0.9}
        note = f"stage: {stage}\nrms(u)/rms(r) = {row['suppression']:.2g}"
        uax.text(
            0.98,
            0.97,
            note,
            transform=uax.transAxes,
            va="top",
            ha="right",
            fontsize="small",
            bbox=box,
        )
        rax.text(
            0.02,
            0.97,
            f"dip(r) = {row['dip_r']:.3f}",
            transform=rax.transAxes,
            va="top",
            fontsize="small",
            bbox=box,
        )
    rax.legend(fontsize="small", loc="upper right")
    return axes
