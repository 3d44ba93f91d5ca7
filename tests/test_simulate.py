"""simulate: real torch AdamW state that walks the theory's stages. Truth is computed here from the
saved state with float64 numpy and diptest on every coordinate, independently of adamscope.stats."""

from __future__ import annotations

import json
from pathlib import Path

import diptest
import numpy as np
import pytest
import torch

from adamscope.errors import AdamscopeError
from adamscope.sim.section4 import Phase, default_schedule, expected_stage, simulate


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate(tmp_path_factory.mktemp("sim") / "run", save_every=1000)


def _stage(ck: dict, name: str) -> str:
    opt = ck["optimizer"]
    for g in opt["param_groups"]:
        if name in g["param_names"]:
            st = opt["state"][g["params"][g["param_names"].index(name)]]
            b1, b2 = g["betas"]
            t = float(st["step"])
            m = st["exp_avg"].double().numpy().ravel() / (1 - b1**t)
            s = np.sqrt(st["exp_avg_sq"].double().numpy().ravel() / (1 - b2**t))
            u, r = m / (s + g["eps"]), m / s
            sup = np.sqrt(np.mean(u**2) / np.mean(r**2))
            dip, p = diptest.diptest(r)
            bimodal = dip >= 0.01 and p < 0.01
            if sup < 0.5:
                return "primed" if bimodal else "vanishing"
            return "unstable" if bimodal else "healthy"
    raise KeyError(name)


def test_checkpoints_are_nanogpt_style(run: Path) -> None:
    sched = json.loads((run / "schedule.json").read_text())
    ends = [p["end_step"] for p in sched["phases"]]
    assert sorted(int(p.name[5:]) for p in run.glob("step_*")) == sorted(set(ends) | {1000})
    ck = torch.load(run / f"step_{ends[0]}" / "ckpt.pt", weights_only=True)
    assert set(ck) >= {"model", "optimizer", "iter_num"} and ck["iter_num"] == ends[0]
    names = [n for g in ck["optimizer"]["param_groups"] for n in g["param_names"]]
    assert sorted(names) == sorted(ck["model"])
    assert "transformer.h.0.mlp.c_fc.weight" in names
    assert 20_000 <= sum(v.numel() for v in ck["model"].values()) <= 50_000


@pytest.mark.parametrize("phase_index", range(len(default_schedule())))
def test_affected_layers_reach_each_phase_stage(run: Path, phase_index: int) -> None:
    sched = default_schedule()
    end = sum(p.steps for p in sched[: phase_index + 1])
    ck = torch.load(run / f"step_{end}" / "ckpt.pt", weights_only=True)
    want = expected_stage(sched, end)
    assert _stage(ck, "transformer.wte.weight") == want
    assert _stage(ck, "transformer.h.0.mlp.c_fc.weight") == want
    assert _stage(ck, "transformer.h.2.mlp.c_fc.weight") == "healthy"  # not affected


def test_loss_log_spikes_in_unstable_phases(run: Path) -> None:
    from adamscope.logs import ingest
    from adamscope.logs.spikes import detect

    out = detect(ingest(run / "train_log.jsonl"))
    sched = default_schedule()
    starts = [sum(p.steps for p in sched[:i]) + 1 for i, p in enumerate(sched) if p.loss == "spike"]
    assert [s["start"] for s in out["spikes"]] == starts
    assert [s["recovered"] for s in out["spikes"]] == [True, False]
    assert out["t1"] < out["t2"] < out["t3"]


def test_refuses_a_folder_with_checkpoints(run: Path) -> None:
    with pytest.raises(AdamscopeError, match="already holds"):
        simulate(run)
    with pytest.raises(AdamscopeError, match="at least one phase"):
        simulate(run.parent / "other", schedule=[Phase(stage="healthy", steps=0, rho=0.1, scale=1)])
