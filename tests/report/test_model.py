"""The report's content: stage history, verdict, remedies and table rows against the synthetic truth."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest
from synth import EPS, Walk, make_tables

from adamscope import load
from adamscope.errors import AdamscopeError
from adamscope.report import advice, model


def _run(folder: Path) -> model.RunData:
    return model.run_data(load(folder))


WALK = Walk()  # affected layers: vanishing at index 3, primed 5, unstable 7, healthy again 9
EVERY = 100  # synthetic checkpoints are step_(i + 1) * 100


def step_of(index: int) -> int:
    return (index + 1) * EVERY


def test_histories_and_default_checkpoint(small_tables: Path) -> None:
    run = _run(small_tables)
    assert [c.step for c in run.checkpoints] == [step_of(i) for i in range(12)]
    emb = next(h for h in run.histories if h.layer == "embedding")
    assert emb.first == {"healthy": 0, "vanishing": 3, "primed": 5, "unstable": 7}
    assert [h.layer for h in run.histories if h.flagged] == ["embedding", "block.0"]
    # default: the first checkpoint holding a primed/unstable layer
    assert model.default_checkpoint(run).step == step_of(WALK.primed)
    assert model.pick_checkpoint(run, 1200).name == "step_1200"
    assert model.pick_checkpoint(run, "step_300").step == 300
    with pytest.raises(AdamscopeError, match="no checkpoint 'step_7'"):
        model.pick_checkpoint(run, "step_7")


def test_spike_found_where_it_was_put(small_tables: Path) -> None:
    run = _run(small_tables)
    # synth adds +2.5 to the loss for 10 steps from step_of(unstable) + 1
    assert len(run.spikes) == 1
    sp = run.spikes[0]
    assert sp.start == step_of(WALK.unstable) + 1
    assert step_of(WALK.unstable) < sp.peak < step_of(WALK.unstable) + 11
    assert sp.recovered
    assert model.checkpoint_before(run, sp.start).step == step_of(WALK.unstable)


def test_verdict_and_remedies_name_the_run(small_tables: Path) -> None:
    run = _run(small_tables)
    v = advice.verdict(run, thresholds={"dip": 0.01})
    assert v.level == "unstable"
    assert [r["layer"] for r in v.layers] == ["embedding", "block.0"]
    assert {r["primed"] for r in v.layers} == {step_of(WALK.primed)}
    assert {r["unstable"] for r in v.layers} == {step_of(WALK.unstable)}
    assert f"step {step_of(WALK.primed)}" in v.headline
    assert "recovered" in v.details[0]
    remedies = dict(v.remedies)
    assert set(remedies) == {
        "Lower eps",
        "eps = 0, with u = 0 where v = 0",
        "Reset that layer's optimizer state when r turns bimodal",
        "Smaller batch or betas",
        "Skip the triggering batch",
    }
    # the suggested eps is below every flagged layer's grad_rms when it was first flagged
    flagged = pl.read_parquet(small_tables / "layers.parquet").filter(
        pl.col("layer").is_in(["embedding", "block.0"]) & (pl.col("step") == step_of(WALK.primed))
    )
    suggested = float(re.search(r"eps = ([0-9.e+-]+)", remedies["Lower eps"]).group(1))
    assert suggested < flagged["grad_rms"].min() < EPS
    assert "(0.9, 0.95)" in remedies["Smaller batch or betas"]
    skip = remedies["Skip the triggering batch"]
    assert f"step_{step_of(WALK.unstable)}" in skip and f"step {run.spikes[0].start}" in skip
    # 3 zero-v coordinates per primed layer row (synth), 2 layers
    assert "(6 such" in remedies["eps = 0, with u = 0 where v = 0"]


def test_healthy_run_has_no_remedies(tmp_path: Path) -> None:
    run = _run(make_tables(tmp_path / "t", walk=None))
    v = advice.verdict(run, thresholds={})
    assert v.level == "healthy" and not v.remedies and not v.layers
    assert model.default_checkpoint(run) == run.checkpoints[-1]
    assert run.spikes == []


def test_vanishing_only_run_says_watch(tmp_path: Path) -> None:
    never = 10**6
    run = _run(
        make_tables(
            tmp_path / "t", walk=Walk(vanishing=2, primed=never, unstable=never, recover=never)
        )
    )
    v = advice.verdict(run, thresholds={})
    assert v.level == "vanishing" and not v.remedies
    assert "Watch 2 vanishing layers (embedding, block.0)" in v.details[0]


def test_layer_rows_match_the_tables(small_tables: Path) -> None:
    run = _run(small_tables)
    ck = model.pick_checkpoint(run, step_of(WALK.primed))
    rows = model.layer_rows(run, ck)
    keys = [k for k, _, _ in model.TABLE_COLUMNS]
    truth = pl.read_parquet(small_tables / "layers.parquet").filter(pl.col("checkpoint") == ck.name)
    assert len(rows) == truth.height == 6
    for row in rows:
        got = dict(zip(keys, row, strict=True))
        want = truth.filter(pl.col("layer") == got["layer"]).row(0, named=True)
        assert got["stage"] == want["stage"]
        assert got["grad_rms"] == pytest.approx(want["grad_rms"], rel=1e-4)
        assert got["grad_over_eps"] == pytest.approx(want["grad_rms"] / EPS, rel=1e-3)
        flagged = got["layer"] in ("embedding", "block.0")
        assert got["first_flag"] == (step_of(WALK.primed) if flagged else None)


def test_key_checkpoints(small_tables: Path) -> None:
    run = _run(small_tables)
    keys = model.key_checkpoints(run, model.default_checkpoint(run))
    want = {WALK.vanishing, WALK.primed, WALK.unstable, 11}  # before-spike == first unstable here
    assert {c.index for c in keys} == want


def test_missing_tables_raise(tmp_path: Path) -> None:
    with pytest.raises(AdamscopeError, match=r"tensors.parquet: missing; run `adamscope analyze"):
        _run(tmp_path)
    make_tables(tmp_path, n_ckpts=1, walk=None, loss_steps=0)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(AdamscopeError, match="manifest.json: not valid JSON"):
        _run(tmp_path)


def test_a_flagged_head_gets_a_caveat_and_early_layers_alone_do_not(tmp_path: Path) -> None:
    early = _run(make_tables(tmp_path / "early", n_layers=4, n_affected=2))
    assert not any("The head is flagged" in d for d in advice.verdict(early, thresholds={}).details)
    every = _run(make_tables(tmp_path / "all", n_layers=4, n_affected=4))
    v = advice.verdict(every, thresholds={})
    assert "head" in [r["layer"] for r in v.layers]
    assert any("The head is flagged" in d for d in v.details)
