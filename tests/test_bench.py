"""adamscope bench at a tiny size (no timing assertions), and the threaded engine path it relies on."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from adamscope.config import ReaderOptions, StatsConfig
from adamscope.perf.bench import gpt_shapes, make_checkpoint, parse_count, run_bench
from adamscope.readers.nanogpt import NanoGPTReader
from adamscope.stats.engine import summarize, tensor_state_from_tensors
from adamscope.tables.rows import stats_row
from adamscope.vocab import HyperParams


def test_parse_count() -> None:
    assert parse_count("250M") == 250_000_000
    assert parse_count("1.5B") == 1_500_000_000
    assert parse_count("300k") == 300_000
    assert parse_count("1234") == 1234


def test_generated_checkpoint_is_nanogpt_with_the_promised_state(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "ckpt.pt", params=200_000)
    want = sum(math.prod(s) for _, s in gpt_shapes(200_000))
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) >= {"model", "optimizer", "iter_num"}
    states = NanoGPTReader(path, options=ReaderOptions()).iter_tensors()
    got = {ts.name: ts for ts in states}
    assert sum(ts.numel for ts in got.values()) == want
    assert "transformer.h.0.mlp.c_fc.weight" in got
    # r = m_hat / sqrt(v_hat) is N(0, 0.25) on healthy tensors, +-1 on every fifth weight matrix
    st = ckpt["optimizer"]["state"][0]
    m, v = st["exp_avg"].double().numpy(), st["exp_avg_sq"].double().numpy()
    r = (m / (1 - 0.9**2000)) / np.sqrt(v / (1 - 0.95**2000))
    assert np.std(r) == pytest.approx(0.25, rel=0.05)
    assert (v > 0).all()


def test_bench_runs_tiny_and_reports_ratios(tmp_path: Path) -> None:
    res = run_bench(
        params=200_000, device="cpu", reps=1, workdir=tmp_path, checkpoint=None, sizes=[100_000]
    )
    text = res.report()
    for k in ("floor", "baseline", "analyze", "analyze / floor", "analyze / baseline"):
        assert k in text
    assert res.stats["analyze"].state_bytes == res.stats["floor"].state_bytes == res.params * 8
    assert res.stats["baseline"].state_bytes == res.params * 8
    assert all(s.rss_bytes > 10 * 2**20 and s.work_s > 0 for s in res.stats.values())
    assert len(res.scale) == 1 and res.scale[0].params < res.params


def test_threaded_engine_matches_one_thread() -> None:
    """Several CPU workers (blocks shared out) give the sketch of one worker, bit for bit."""
    g = torch.Generator().manual_seed(3)
    n = 1_500_000
    v = torch.rand(n, generator=g).mul_(1e-6)
    m = torch.randn(n, generator=g).mul_(v.sqrt()).mul_(0.3)
    v[5], m[7] = 0.0, float("nan")
    hp = HyperParams(beta1=0.9, beta2=0.95, eps=1e-8)
    cfg = StatsConfig(device="cpu", chunk_elems=700_000)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = summarize(tensor_state_from_tensors("w", m, v, step=50.0, hp=hp), cfg)
        torch.set_num_threads(3)
        three = summarize(tensor_state_from_tensors("w", m, v, step=50.0, hp=hp), cfg)
        assert torch.get_num_threads() == 3  # restored
    finally:
        torch.set_num_threads(before)
    assert stats_row(one) == pytest.approx(stats_row(three), nan_ok=True)
    assert one.mu == three.mu and one.mr == three.mr  # same blocks merged in the same order
    for q in one.hists:
        np.testing.assert_array_equal(one.hists[q], three.hists[q])
    assert one.nonfinite == three.nonfinite == 1
