"""`adamscope.report.demo`: the whole pipeline on a simulated run whose stages are known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adamscope import load
from adamscope.errors import AdamscopeError
from adamscope.report import advice, demo, model
from adamscope.sim.section4 import Phase, expected_stage


def _run(folder: Path) -> model.RunData:
    return model.run_data(load(folder))


def test_demo_report_tells_the_simulated_story(demo_report: Path) -> None:
    out = demo_report.parent
    assert demo_report.name == "report.html" and demo_report.stat().st_size < 2e6
    sched = json.loads((out / "run" / "schedule.json").read_text())
    phases = [Phase(**{k: v for k, v in p.items() if k != "end_step"}) for p in sched["phases"]]
    affected = {"embedding", "block.0"}  # simulate's n_affected = 2 first layers in depth order
    assert sched["n_affected"] == 2

    run = _run(out / "tables")
    v = advice.verdict(run, thresholds=run.manifest["thresholds"])
    assert v.level == "unstable"
    assert {r["layer"] for r in v.layers} == affected
    for r in v.layers:  # truth: the schedule's phase at the step the report names
        assert expected_stage(phases, r["primed"]) == "primed", r
        assert expected_stage(phases, r["unstable"]) == "unstable", r
    # the synthetic loss spikes once per unstable phase; the second ends flat (simulate docstring)
    assert len(run.spikes) == 2
    assert run.spikes[0].recovered and not run.spikes[1].recovered
    assert all(expected_stage(phases, s.start) == "unstable" for s in run.spikes)
    text = demo_report.read_text()
    assert "the loss did not: spike 2 ended flat" in text
    assert "figure unavailable" not in text


def test_demo_twice_reuses_its_run_and_refuses_foreign_checkpoints(
    demo_report: Path, tmp_path: Path
) -> None:
    run = demo_report.parent / "run"
    before = sorted(p.name for p in run.iterdir())
    assert demo(demo_report.parent) == demo_report  # the README's first command, run again
    assert sorted(p.name for p in run.iterdir()) == before
    foreign = tmp_path / "other"
    (foreign / "run" / "step_1").mkdir(parents=True)
    with pytest.raises(AdamscopeError, match="did not make"):
        demo(foreign)
