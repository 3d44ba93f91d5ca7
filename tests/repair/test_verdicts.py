"""--reset-layers by verdict: on the Section 4 model through real AdamW (adamscope.sim.section4,
the schedule healthy -> vanishing -> primed -> unstable), `primed` resets exactly the layers that
analyze calls primed at that checkpoint (judged in memory), and `unstable` — which needs the run's
history — those the run's tables call unstable (--from-tables)."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

import adamscope
from adamscope.repair import repair
from adamscope.sim.section4 import Phase, default_schedule, simulate

from ._make import listing


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    phases = default_schedule()[:4]  # healthy, vanishing, primed, unstable
    assert [p.stage for p in phases] == ["healthy", "vanishing", "primed", "unstable"]
    return simulate(tmp_path_factory.mktemp("sim") / "run", schedule=phases, save_every=1000)


def _ends(run: Path) -> list[int]:
    return sorted(int(p.name.removeprefix("step_")) for p in run.glob("step_*"))


def test_primed_from_an_in_memory_analysis(run: Path, tmp_path: Path) -> None:
    ckpt = run / f"step_{_ends(run)[2]}" / "ckpt.pt"  # the end of the primed phase
    layers = adamscope.analyze(ckpt, gradients=False).layers
    primed = set(layers.filter(pl.col("stage") == "primed")["layer"])
    assert primed  # the model's affected layers
    plan = repair(ckpt, tmp_path / "out", reset_layers="primed")
    assert {r.layer for r in plan.resets} == primed
    assert {r.why for r in plan.resets} == {"stage primed"}
    assert plan.verdicts == "analyze of the checkpoint (in memory)"
    after = adamscope.analyze(tmp_path / "out" / "ckpt.pt", gradients=False).layers
    for row in after.iter_rows(named=True):
        assert (row["m_norm"] == 0) == (row["layer"] in primed)


def test_unstable_needs_the_run_tables(run: Path, tmp_path: Path) -> None:
    ckpt = run / f"step_{_ends(run)[3]}" / "ckpt.pt"  # the end of the unstable phase
    with pytest.raises(adamscope.AdamscopeError, match="never judged unstable"):
        repair(ckpt, tmp_path / "a", reset_layers="unstable")
    tables = adamscope.analyze(run, out=tmp_path / "tables", gradients=False)
    rows = tables.layers.filter(pl.col("checkpoint") == f"step_{_ends(run)[3]}/ckpt.pt")
    unstable = set(rows.filter(pl.col("stage") == "unstable")["layer"])
    assert unstable
    plan = repair(
        ckpt, tmp_path / "b", reset_layers="unstable", from_tables=tmp_path / "tables", eps=1e-12
    )
    assert {r.layer for r in plan.resets} == unstable
    assert plan.verdicts == f"tables in {tmp_path / 'tables'}"
    assert {e.new for e in plan.eps} == {1e-12}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copyfile(ckpt, elsewhere / "ckpt.pt")
    with pytest.raises(adamscope.AdamscopeError, match="hold no rows of"):
        repair(elsewhere / "ckpt.pt", tmp_path / "c", reset_layers="primed",
               from_tables=tmp_path / "tables")  # fmt: skip
    assert sorted(p for p in listing(tmp_path) if "/" not in p) == ["b", "elsewhere", "tables"]


def test_phase_schedule_is_what_the_tests_assume() -> None:
    assert Phase(stage="primed", steps=1, rho=10.0, scale=1.0).stage == "primed"
