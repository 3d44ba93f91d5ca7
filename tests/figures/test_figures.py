"""Figures 2-10 and the heatmap on a simulated run that walks every stage: files exist, and the data
behind each figure is the selection the documented rules give (checked against the tables)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import polars as pl
import pytest

from adamscope import load
from adamscope.errors import AdamscopeError
from adamscope.figures import select, write_figures, write_heatmap


@pytest.fixture(scope="module")
def figs(sim_tables: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("figs")
    write_figures(out, sim_tables)
    return out


def _pairs(csv: Path) -> list[tuple[str, int]]:
    df = pl.read_csv(csv).select("layer", "step").unique(maintain_order=True)
    return [(r[0], r[1]) for r in df.iter_rows()]


def test_all_nine_figures_are_written(figs: Path) -> None:
    for n in range(2, 11):
        (png,) = figs.glob(f"fig{n}_*.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert png.with_suffix(".svg").read_text().lstrip().startswith("<?xml")
        assert list(figs.glob(f"fig{n}_*.csv"))


def test_figure6_shows_figure5_layers_and_steps(figs: Path, sim_tables: Path) -> None:
    sel = json.loads((figs / "selection.json").read_text())
    five = _pairs(next(figs.glob("fig5_*.csv")))
    assert five == _pairs(next(figs.glob("fig6_*.csv"))) == [tuple(p) for p in sel["fig5"]]
    layers = pl.read_parquet(sim_tables / "layers.parquet").filter(pl.col("numel") >= 1000)
    # the rule: each shown layer at its own minimum suppression, and only suppressed layers
    for layer, step in five:
        rows = layers.filter(pl.col("layer") == layer)
        assert rows.filter(pl.col("step") == step)["suppression"][0] == rows["suppression"].min()
        assert rows["suppression"].min() < 0.5
    suppressed = layers.filter(pl.col("suppression") < 0.5)["layer"].unique().to_list()
    assert sorted(layer for layer, _ in five) == sorted(suppressed) == ["block.0", "embedding"]


def test_figure2_and_3_selection(figs: Path, sim_tables: Path) -> None:
    layers = pl.read_parquet(sim_tables / "layers.parquet")
    sel = json.loads((figs / "selection.json").read_text())
    stage = {(r["layer"], r["step"]): r["stage"] for r in layers.iter_rows(named=True)}
    two = _pairs(next(figs.glob("fig2_*.csv")))
    assert two and all(s == sel["fig2_step"] and stage[(n, s)] == "healthy" for n, s in two)
    three = _pairs(next(figs.glob("fig3_*.csv")))
    assert three and all(stage[p] == "unstable" for p in three)


def test_t1_t2_t3_and_their_checkpoints(figs: Path, sim_run: Path) -> None:
    sel = json.loads((figs / "selection.json").read_text())
    t, ck = sel["t"], sel["t_checkpoint"]
    assert t["t1"] < t["t2"] < t["t3"]
    steps = sorted(int(p.name[5:]) for p in sim_run.glob("step_*"))
    for k in ("t1", "t2", "t3"):
        assert ck[k] == min(s for s in steps if s >= t[k])
    nine = pl.read_csv(next(figs.glob("fig9_*.csv")))
    assert set(nine.filter(pl.col("quantity") == "u")["step"].to_list()) == {ck["t2"]}
    assert set(nine.drop_nulls("layer")["layer"].to_list()) == {"embedding"}


def test_heatmap_norms_are_the_logged_norms(figs: Path, sim_run: Path) -> None:
    norms = pl.read_csv(figs / "fig4_heatmap.norms.csv")
    assert set(norms["source"].to_list()) == {"logged"}
    line = json.loads((sim_run / "train_log.jsonl").read_text().splitlines()[449])  # step 450
    want = math.sqrt(
        sum(v * v for k, v in line.items() if k.startswith("grad_norm/transformer.h.0."))
    )
    got = norms.filter((pl.col("step") == 450) & (pl.col("layer") == "block.0"))["grad_norm"][0]
    assert got == pytest.approx(want, rel=1e-12)
    # vanishing phase: the embedding's gradient RMS is below eps = 1e-8, healthy block.2 is not
    at = norms.filter(pl.col("step") == 300)
    assert at.filter(pl.col("layer") == "embedding")["below_eps"][0]
    assert not at.filter(pl.col("layer") == "block.2")["below_eps"][0]


def test_heatmap_estimate_without_logged_norms(sim_tables: Path, tmp_path: Path) -> None:
    tables = tmp_path / "tables"
    shutil.copytree(sim_tables, tables)
    (tables / "grad_norms.parquet").unlink()
    files = write_heatmap(tables, tmp_path / "hm" / "heatmap", formats=("png",))
    assert {p.name for p in files} == {
        "heatmap.png",
        "heatmap.norms.csv",
        "heatmap.stages.csv",
        "heatmap.strip.csv",
    }
    norms = pl.read_csv(tmp_path / "hm" / "heatmap.norms.csv")
    layers = pl.read_parquet(tables / "layers.parquet")
    joined = norms.join(layers.select("step", "layer", "grad_rms", "numel"), on=["step", "layer"])
    assert len(joined) == len(layers)
    for r in joined.iter_rows(named=True):
        assert r["grad_norm"] == pytest.approx(
            r["grad_rms_right"] * math.sqrt(r["numel"]), rel=1e-9
        )
    stages = pl.read_csv(tmp_path / "hm" / "heatmap.stages.csv")
    assert set(stages.drop_nulls("stage")["stage"]) == {
        "healthy",
        "vanishing",
        "primed",
        "unstable",
    }


def test_overrides(sim_tables: Path, tmp_path: Path) -> None:
    tables = load(sim_tables)
    sel = select(tables, steps=[100, None, 990], layers=["block.0"], focus_layer="block.0")
    assert sel.t["t1"] == 100 and sel.t["t3"] == 990 and sel.t["t2"] is not None
    assert sel.t_checkpoint["t1"] == 100 and sel.t_checkpoint["t3"] == 1000
    assert {p[0] for p in sel.fig5} == {"block.0"} and sel.fig2_layers == ["block.0"]
    with pytest.raises(AdamscopeError, match="not in layers.parquet"):
        select(tables, layers=["block.99"])
    files = write_figures(tmp_path, sim_tables, only=[7], formats=("pdf",))
    assert sorted(p.name for p in files) == [
        "fig7_perplexity.csv",
        "fig7_perplexity.pdf",
        "selection.json",
    ]
    with pytest.raises(AdamscopeError, match="unknown figure"):
        write_figures(tmp_path, sim_tables, only=[11])


def test_figure_functions_draw_into_a_given_axes(sim_tables: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adamscope.figures import dists

    tables = load(sim_tables)
    sel = select(tables)
    fig, ax = plt.subplots()
    try:
        assert dists.figure6(tables, ax, sel=sel) is ax
        assert len(ax.patches) == len(sel.fig6)  # one stairs per (layer, step)
        modes = sorted(line.get_xdata()[0] for line in ax.lines)
        assert modes == [-1.0, 1.0]  # torch convention
    finally:
        plt.close(fig)
