"""adamscope.monitor with a plain torch loop: the rows written live at step N equal the rows
analyze writes for a checkpoint saved at step N; the live columns equal a float64 reference."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

import adamscope
from adamscope.errors import AdamscopeError
from adamscope.monitor import attach
from adamscope.sim import proxy

from ._train import assert_rows_equal, batches, loss_of, reference, save_nanogpt, tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """10 steps of the proxy GPT, monitored every 5, a nanoGPT checkpoint saved at step 10."""
    tmp = tmp_path_factory.mktemp("mon")
    cfg = tiny_config()
    torch.manual_seed(0)
    model = proxy.build_model(cfg)
    opt = proxy.build_optimizer(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    mon = attach(opt, model=model, out=tmp / "mon", every=5, dip_sample=1024)  # samples < numel
    ref = None
    for i, x in enumerate(batches(10, cfg), start=1):
        loss = loss_of(model, x)
        loss.backward()
        before = {id(p): p.detach().double().numpy().ravel().copy() for p in model.parameters()}
        opt.step()
        mon.log(i, loss)
        if i == 10:
            ref = reference(opt, names, before)
            save_nanogpt(tmp / "ckpt" / "ckpt.pt", model, opt, cfg, 10)
        opt.zero_grad()
    mon.close()
    return tmp, mon, ref


def test_rows_equal_analyze(run):
    tmp, mon, _ = run
    live = adamscope.load(tmp / "mon")
    post = adamscope.analyze(
        tmp / "ckpt" / "ckpt.pt", dip_sample=live.manifest["options"]["dip_sample"]
    )
    assert mon.flushes == 2 and live.steps() == [5, 10]
    assert_rows_equal(live.tensors.filter(pl.col("step") == 10), post.tensors, "tensor")
    assert_rows_equal(live.layers.filter(pl.col("step") == 10), post.layers, "layer")
    # the histograms too: the same bins and counts per layer
    key = ["layer", "quantity", "lo"]
    h_live = live.histograms.filter((pl.col("step") == 10) & (pl.col("level") == "layer"))
    h_post = post.histograms.filter(pl.col("level") == "layer")
    assert h_live.select(*key, "count").sort(key).equals(h_post.select(*key, "count").sort(key))


def test_live_columns_equal_float64_reference(run):
    tmp, _, ref = run
    rows = adamscope.load(tmp / "mon").tensors.filter(pl.col("step") == 10)
    assert rows.height == len(ref)
    for r in rows.iter_rows(named=True):
        want = ref[r["tensor"]]
        for col in (
            "g_norm",
            "g_rms",
            "g2_vhat_mean",
            "g2_vhat_gt1",
            "update_rms",
            "update_grad_cos",
        ):
            np.testing.assert_allclose(
                r[col], want[col], rtol=2e-4, atol=1e-12, err_msg=f"{r['tensor']} {col}"
            )
        for col in ("g2_vhat_q50", "g2_vhat_q90"):  # from the 20-bins-a-decade histogram
            if r["numel"] < 1000:  # few points: the quantile falls between far-apart values
                continue
            if want[col] < 1e-20:  # among the zeros (embedding rows no token of the batch hit)
                assert r[col] == 0.0, (r["tensor"], col, r[col])
                continue
            assert abs(np.log10(r[col]) - np.log10(want[col])) <= 0.06, (
                r["tensor"],
                col,
                r[col],
                want[col],
            )


def test_layer_live_columns_merge_tensors(run):
    tmp, _, _ = run
    t = adamscope.load(tmp / "mon")
    tens = t.tensors.filter(pl.col("step") == 10)
    lay = t.layers.filter(pl.col("step") == 10)
    for r in lay.iter_rows(named=True):
        mine = tens.filter(pl.col("layer") == r["layer"])
        np.testing.assert_allclose(r["g_norm"], np.sqrt((mine["g_norm"] ** 2).sum()), rtol=1e-9)
        n = mine["numel"].sum()
        np.testing.assert_allclose(
            r["update_rms"], np.sqrt((mine["update_rms"] ** 2 * mine["numel"]).sum() / n), rtol=1e-9
        )


def test_losses_and_manifest(run):
    tmp, _, _ = run
    t = adamscope.load(tmp / "mon")
    assert t.losses["step"].to_list() == list(range(1, 11))
    assert t.manifest["source"] == "monitor" and t.manifest["live"]["steps"] == [5, 10]


def test_report_and_figures_on_live_tables(run, tmp_path):
    tmp, _, _ = run
    from adamscope.report.render import write_report

    html = tmp_path / "r.html"
    write_report(tmp / "mon", html)
    assert html.stat().st_size > 10_000
    from adamscope.figures.heatmap import live_norms

    t = adamscope.load(tmp / "mon")
    norms = live_norms(t)  # the heatmap's source: the monitor's exact layer norms of p.grad
    assert norms is not None and norms.height == t.layers.height
    written = adamscope.figures.write_heatmap(t, tmp_path / "heat", formats=("png",))
    assert written


def test_refuses_bad_arguments(tmp_path):
    cfg = tiny_config()
    model = proxy.build_model(cfg)
    opt = proxy.build_optimizer(model, cfg)
    with pytest.raises(AdamscopeError, match="every"):
        attach(opt, model=model, out=tmp_path / "a", every=0)
    with pytest.raises(AdamscopeError, match="unknown monitor option"):
        attach(opt, model=model, out=tmp_path / "a", dip_samples=3)
    with pytest.raises(AdamscopeError, match="not a torch.optim.Optimizer"):
        attach(object(), out=tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "tensors.parquet").write_bytes(b"x")
    with pytest.raises(AdamscopeError, match="analyze's tables"):
        attach(opt, model=model, out=tmp_path / "b")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "c").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(AdamscopeError, match="symlink"):
        attach(opt, model=model, out=tmp_path / "c")
