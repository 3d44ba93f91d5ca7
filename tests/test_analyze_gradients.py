"""`analyze` on a run with checkpoints one step apart writes exact gradients, and the heatmap uses them."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import polars as pl
import pytest

from adamscope.api import AnalyzeOptions, analyze
from adamscope.figures import write_heatmap
from adamscope.tables.layers import assign_layers

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_consecutive_pair_gives_exact_layer_norms_in_the_heatmap(tmp_path: Path) -> None:
    truth = json.loads((FIXTURES / "consecutive" / "truth.json").read_text())
    pair = truth["pairs"]["adamw/ckpt_21.pt"]  # true p.grad captured at training time
    out = tmp_path / "out"
    analyze(FIXTURES / "consecutive" / "adamw", options=AnalyzeOptions(out=out))

    grads = pl.read_parquet(out / "gradients.parquet")
    # 20 -> 21 is consecutive; 21 -> 24 is not, and analyze only recovers exact pairs
    assert sorted(set(grads["step"].to_list())) == [21]
    layer_of = assign_layers(list(pair["tensors"]))
    want: dict[str, float] = {}
    for name, t in pair["tensors"].items():
        want[layer_of[name].layer] = want.get(layer_of[name].layer, 0.0) + t["grad_norm"] ** 2
    rows = grads.filter(pl.col("level") == "layer")
    assert rows["consistent"].all() and rows["exact"].all()
    for r in rows.iter_rows(named=True):
        assert r["grad_norm"] == pytest.approx(math.sqrt(want[r["layer"]]), rel=1e-4), r["layer"]

    files = write_heatmap(out, tmp_path / "heat", formats=("png",))
    assert (tmp_path / "heat.png") in files
    with open(tmp_path / "heat.norms.csv") as fh:
        cells = list(csv.DictReader(fh))
    at21 = [c for c in cells if c["step"] == "21"]
    assert at21 and all(c["source"].startswith("exact") for c in at21)
    assert all(c["source"].startswith("estimate") for c in cells if c["step"] != "21")
    for c in at21:
        assert float(c["grad_norm"]) == pytest.approx(math.sqrt(want[c["layer"]]), rel=1e-4)
