"""Smoke tests of the proxy run (adamscope.sim.proxy) and its analysis (experiments.proxy_analysis)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest
import torch

from adamscope.sim.proxy import OnlineSpikes, ProxyConfig, run_proxy
from experiments.proxy_analysis import SignalOptions, evaluate, run_tables

TINY = ProxyConfig(
    n_layer=1,
    n_head=2,
    n_embd=32,
    block_size=16,
    batch_size=4,
    steps=12,
    warmup=3,
    data_bytes=100_000,
    ckpt_every=4,
    ring=3,
    after=2,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("proxy")
    return out, run_proxy(out, config=TINY)


def test_checkpoints_and_log(run: tuple[Path, dict]) -> None:
    out, summary = run
    assert summary["checkpoints"] == [3, 4, 7, 8, 11, 12]  # periodic steps and the step before
    sd = torch.load(out / "step_8" / "ckpt.pt", weights_only=True)
    assert set(sd) >= {"model", "optimizer", "iter_num", "model_args"}
    assert sd["iter_num"] == 8
    names = [n for g in sd["optimizer"]["param_groups"] for n in g["param_names"]]
    assert "transformer.wte.weight" in names and "lm_head.weight" in names
    # embeddings are not decayed (group 1), matrices are (group 0)
    g0, g1 = sd["optimizer"]["param_groups"]
    assert "transformer.wte.weight" in g1["param_names"] and g1["weight_decay"] == 0.0
    assert "transformer.h.0.attn.c_attn.weight" in g0["param_names"]
    assert all(float(s["step"]) == 8 for s in sd["optimizer"]["state"].values())
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    for r in rows:
        per = [v for k, v in r.items() if k.startswith("grad_norm/")]
        assert len(per) == 3  # embedding, block.0, head
        assert math.isclose(math.sqrt(sum(v * v for v in per)), r["grad_norm"], rel_tol=1e-5)


def test_ring_saves_the_steps_before_a_spike(tmp_path: Path) -> None:
    # a threshold of -inf fires as soon as 10 losses of history exist (step 11); the firing keeps
    # the 3 steps before it and the 2 after it, and nothing else (no periodic checkpoints)
    s = run_proxy(
        tmp_path, config=TINY, steps=16, ckpt_every=0, spike_z=-math.inf, max_spike_saves=1
    )
    assert s["online_spikes"][0] == 11
    assert s["checkpoints"] == [8, 9, 10, 11, 12, 13]


def test_online_rule_fires_once_on_a_jump() -> None:
    det = OnlineSpikes(window=50, z_start=6.0, z_end=3.0)
    rng = torch.Generator().manual_seed(0)
    noise = (torch.randn(200, generator=rng) * 0.01 + 2.0).tolist()
    losses = noise[:100] + [3.0, 2.5, 2.2] + noise[100:]
    fired = [i for i, x in enumerate(losses) if det.update(x)]
    assert fired == [100]


def test_analyze_recovers_the_logged_gradients(run: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = run
    tables = run_tables(out, tmp_path / "tables")
    layers = pl.read_parquet(tables / "layers.parquet")
    assert sorted(set(layers["step"].to_list())) == [3, 4, 7, 8, 11, 12]
    assert set(layers["layer"].to_list()) == {"embedding", "block.0", "head"}
    assert len(pl.read_parquet(tables / "losses.parquet")) == 12
    # exact gradients from consecutive checkpoints vs the norms logged during training
    g = pl.read_parquet(tables / "gradients.parquet").filter(pl.col("level") == "layer")
    logged = {json.loads(x)["step"]: json.loads(x) for x in (out / "train_log.jsonl").open()}
    for r in g.iter_rows(named=True):
        want = logged[r["step"]][f"grad_norm/{r['layer']}"]
        assert r["exact"] and math.isclose(r["grad_norm"], want, rel_tol=1e-3), r
    res = evaluate(tables, SignalOptions(ckpt_every=4, horizon=4, lag=1))
    assert set(res["signals"]) >= {"primed", "r_bimodal", "cos_negative"}
    for sig in res["signals"].values():
        assert sig["periodic_checked"] == 3 and 0 <= sig["false_alarms"] <= 3
