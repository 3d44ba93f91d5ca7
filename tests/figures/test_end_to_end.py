"""simulate -> adamscope.api.analyze -> logs -> figures/heatmap, on the real engine's tables."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from adamscope.figures import write_figures, write_heatmap
from adamscope.logs import write_logs
from adamscope.sim.section4 import default_schedule, expected_stage, simulate


def test_simulate_analyze_figures(tmp_path: Path) -> None:
    api = pytest.importorskip("adamscope.api")
    run = simulate(tmp_path / "run", save_every=10_000)  # one checkpoint per phase end
    # discovery does not (yet) take step_N/ckpt.pt folders: analyse a flat view of the same files.
    flat = tmp_path / "flat"
    flat.mkdir()
    for ck in run.glob("step_*/ckpt.pt"):
        (flat / f"ckpt_{ck.parent.name[5:]}.pt").symlink_to(ck)
    out = tmp_path / "out"
    api.analyze(flat, options=api.AnalyzeOptions(out=out))
    assert [p.name for p in write_logs(out, run)] == ["losses.parquet", "grad_norms.parquet"]

    layers = pl.read_parquet(out / "layers.parquet")
    for row in layers.filter(pl.col("layer") == "embedding").iter_rows(named=True):
        assert row["stage"] == expected_stage(default_schedule(), row["step"]), row["step"]

    files = write_figures(tmp_path / "figs", out, formats=("png",))
    assert len([f for f in files if f.suffix == ".png"]) == 9
    sel = json.loads((tmp_path / "figs" / "selection.json").read_text())
    assert sel["fig6"] == sel["fig5"] and {p[0] for p in sel["fig5"]} == {"embedding", "block.0"}
    assert sel["t"]["t1"] < sel["t"]["t2"] < sel["t"]["t3"]
    hm = write_heatmap(out, tmp_path / "heatmap", formats=("png", "svg"))
    assert {p.suffix for p in hm} == {".png", ".svg", ".csv"}
