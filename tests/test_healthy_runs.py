"""Issue 13: verdicts a user can trust. Healthy tiny runs written by the real Trainer (GPT-2, Llama,
BERT, GPT-NeoX) and by a nanoGPT-style training loop (fixtures/make_healthy.py; losses fall with no
spike, see truth.json), checkpointed at steps 2, 3, 5, 10, 20, 40: no layer or tensor may be
called primed or unstable at any checkpoint. The old fixed-threshold rule called most of them
unstable early on; that is checked too, so this test can fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import adamscope
from adamscope.stats.stages import classify

HEALTHY = Path(__file__).resolve().parents[1] / "fixtures" / "healthy"
RUNS = ["gpt2", "llama", "bert", "neox", "nanogpt"]


@pytest.fixture(scope="module")
def tables() -> dict[str, adamscope.Tables]:
    return {r: adamscope.analyze(HEALTHY / r, gradients=False) for r in RUNS}


@pytest.mark.parametrize("run", RUNS)
def test_healthy_run_is_never_primed_or_unstable(run: str, tables: dict) -> None:
    t = tables[run]
    truth = json.loads((HEALTHY / "truth.json").read_text())["checkpoints"]
    steps = sorted(v["step"] for k, v in truth.items() if k.startswith(f"{run}/"))
    assert sorted(set(t.layers["step"].to_list())) == steps == [2, 3, 5, 10, 20, 40]
    for level in (t.layers, t.tensors):
        bad = level.filter(level["stage"].is_in(["primed", "unstable"]))
        assert bad.is_empty(), bad.select("step", "layer", "stage", "stage_reason").to_dicts()
    early = t.layers.filter(t.layers["step"] <= 3)
    assert set(early["stage"].drop_nulls()) == {"too_early"}  # said as such, not as healthy
    assert (
        t.layers.filter(t.layers["step"] == 40)["stage"]
        .drop_nulls()
        .is_in(["healthy", "correlated"])
        .all()
    )


def test_the_old_rule_called_these_runs_unstable(tables: dict) -> None:
    """Without the null (fixed dip thresholds, the diptest p against a uniform reference) most
    early layers come out unstable: what the new rule must not do."""
    old = 0
    for t in tables.values():
        for r in t.layers.iter_rows(named=True):
            legacy = {k: r[k] for k in ("numel", "suppression", "dip_r", "dip_p_r")}
            old += classify(legacy) == "unstable"
    assert old >= 40
