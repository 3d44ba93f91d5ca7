"""Gradients from consecutive checkpoints, the consistency check, diff and moved_first.

Truth: fixtures/consecutive/truth.json, written by fixtures/make_consecutive.py from the live p.grad
and the live optimizer state at training time (float64 numpy). Tolerances: grad_norm 1e-4 relative,
update_grad_cos 1e-4 absolute (float32 state, one-step cancellation m_t - b1 m_(t-1)).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from adamscope.errors import AdamscopeError
from adamscope.forensics import (
    DiffOptions,
    GradientOptions,
    diff,
    exact_layer_grad_norms,
    layer_changes,
    moved_first,
    pair_gradients,
    write_gradients,
)
from adamscope.forensics.lockstep import aligned
from adamscope.tables.layers import assign_layers

FIX = Path(__file__).resolve().parents[1] / "fixtures"
CONS = FIX / "consecutive"
TRUTH = json.loads((CONS / "truth.json").read_text())


def _layer_truth(tensors: dict, norm: str, cos_dot: str | None = None) -> dict[str, dict]:
    """Layer aggregates of the per-tensor truth: sqrt(sum norm^2), sum dot / (|u| |g|)."""
    layer_of = assign_layers(list(tensors))
    acc: dict[str, dict] = {}
    for name, t in tensors.items():
        a = acc.setdefault(layer_of[name].layer, {"g2": 0.0, "u2": 0.0, "ug": 0.0})
        a["g2"] += t[norm] ** 2
        a["u2"] += t["u_norm"] ** 2
        a["ug"] += t["dot_ug"]
    return {
        k: {"grad_norm": math.sqrt(a["g2"]), "cos": a["ug"] / math.sqrt(a["u2"] * a["g2"])}
        for k, a in acc.items()
    }


@pytest.mark.parametrize("run", ["adamw", "adam_wd"])
def test_consecutive_pair_matches_live_gradients(run: str) -> None:
    truth = TRUTH["pairs"][f"{run}/ckpt_21.pt"]["tensors"]
    opts = GradientOptions(chunk_elems=100)  # several chunks per tensor
    tensors, layers = pair_gradients(
        CONS / run / "ckpt_20.pt", CONS / run / "ckpt_21.pt", options=opts
    )
    assert set(tensors["tensor"]) == set(truth)
    for row in tensors.iter_rows(named=True):
        t = truth[row["tensor"]]
        assert row["exact"] and row["window"] == 1 and row["step"] == 21 and row["prev_step"] == 20
        assert row["grad_norm"] == pytest.approx(t["grad_norm"], rel=1e-4)
        assert row["grad_rms"] == pytest.approx(t["grad_rms"], rel=1e-4)
        assert row["update_grad_cos"] == pytest.approx(t["update_grad_cos"], abs=1e-4)
        assert row["consistent"], row
        assert row["g2_mismatch"] < row["g2_mismatch_floor"]
        assert row["g2_negative_frac"] == 0
        coupled = run == "adam_wd" and row["tensor"].endswith("weight") and t["numel"] > 64
        assert row["grad_kind"] == ("loss+wd" if coupled else "loss"), row["tensor"]
    want = _layer_truth(truth, "grad_norm")
    for row in layers.iter_rows(named=True):
        assert row["grad_norm"] == pytest.approx(want[row["layer"]]["grad_norm"], rel=1e-4)
        assert row["update_grad_cos"] == pytest.approx(want[row["layer"]]["cos"], abs=1e-4)
        assert row["consistent"]


def test_coupled_decay_recovers_adam_input_and_loss_gradient() -> None:
    """Plain Adam folds wd*theta into g; loss_gradient subtracts it using theta_(t-1) from A."""
    truth = TRUTH["pairs"]["adam_wd/ckpt_21.pt"]["tensors"]
    a, b = CONS / "adam_wd" / "ckpt_20.pt", CONS / "adam_wd" / "ckpt_21.pt"
    raw, _ = pair_gradients(a, b)
    loss, _ = pair_gradients(a, b, options=GradientOptions(loss_gradient=True))
    differs = 0
    for r_raw, r_loss in zip(raw.iter_rows(named=True), loss.iter_rows(named=True), strict=True):
        t = truth[r_loss["tensor"]]
        assert r_loss["grad_kind"] == "loss"
        assert r_loss["grad_norm"] == pytest.approx(t["loss_grad_norm"], rel=1e-4)
        assert r_loss["update_grad_cos"] == pytest.approx(t["loss_update_grad_cos"], abs=1e-4)
        differs += abs(r_raw["grad_norm"] / r_loss["grad_norm"] - 1) > 0.1
    assert differs >= 5  # the decayed matrices: wd*theta dominates their gradient here


def test_loss_gradient_without_weights_is_an_error(tmp_path: Path) -> None:
    for step in (20, 21):
        sd = torch.load(CONS / "adam_wd" / f"ckpt_{step}.pt", weights_only=True)
        torch.save(sd["optimizer"], tmp_path / f"optim_{step}.pt")
    with pytest.raises(AdamscopeError, match="model weights"):
        pair_gradients(
            tmp_path / "optim_20.pt",
            tmp_path / "optim_21.pt",
            options=GradientOptions(loss_gradient=True),
        )


def test_steps_apart_give_window_estimates_and_fail_the_check(
    caplog: pytest.LogCaptureFixture,
) -> None:
    truth = TRUTH["pairs"]["adamw/ckpt_24.pt"]["tensors"]
    with caplog.at_level(logging.WARNING):
        tensors, layers = pair_gradients(
            CONS / "adamw" / "ckpt_21.pt", CONS / "adamw" / "ckpt_24.pt"
        )
    assert "3 apart" in caplog.text
    assert not tensors["exact"].any() and (tensors["window"] == 3).all()
    for row in tensors.iter_rows(named=True):
        t = truth[row["tensor"]]
        assert row["grad_rms"] == pytest.approx(t["window_grad_rms"], rel=1e-4)
        assert row["window_grad_norm"] == pytest.approx(t["window_grad_norm"], rel=1e-4)
        assert row["update_grad_cos"] == pytest.approx(t["window_update_grad_cos"], abs=1e-4)
    # the one-step identities do not hold three steps apart: every layer is flagged
    assert not layers["consistent"].any()
    assert (layers["g2_mismatch"] > 100 * layers["g2_mismatch_floor"]).all()
    assert (layers["g2_negative_frac"] > 0.05).all()


def test_modified_exp_avg_is_flagged_in_its_tensor_only() -> None:
    mod = TRUTH["modified"]
    tensors, layers = pair_gradients(CONS / "adamw" / "ckpt_20.pt", CONS / mod["file"])
    bad = tensors.filter(~pl.col("consistent"))["tensor"].to_list()
    assert bad == [mod["tensor"]]
    assert layers.filter(~pl.col("consistent"))["layer"].to_list() == ["block.0"]


def test_earlier_checkpoint_second_is_an_error() -> None:
    with pytest.raises(AdamscopeError, match="earlier checkpoint first"):
        pair_gradients(CONS / "adamw" / "ckpt_21.pt", CONS / "adamw" / "ckpt_20.pt")


def test_chunk_size_does_not_change_results() -> None:
    a, b = CONS / "adamw" / "ckpt_20.pt", CONS / "adamw" / "ckpt_21.pt"
    small, _ = pair_gradients(a, b, options=GradientOptions(chunk_elems=7))
    big, _ = pair_gradients(a, b, options=GradientOptions(chunk_elems=1 << 20))
    for col in ("grad_norm", "update_grad_cos", "g2_mismatch"):
        np.testing.assert_allclose(small[col].to_numpy(), big[col].to_numpy(), rtol=1e-12)


def test_aligned_recuts_streams_with_different_boundaries() -> None:
    x = torch.arange(23, dtype=torch.float64)

    def stream(cuts: list[int]):
        edges = [0, *cuts, 23]
        for lo, hi in zip(edges, edges[1:], strict=False):
            yield lo, (x[lo:hi], x[lo:hi] * 2)

    got = list(aligned([stream([5, 12]), stream([3, 4, 20])], what="t"))
    assert [s for s, _ in got] == [0, 3, 4, 5, 12, 20]
    for _, (pa, pb) in got:
        assert torch.equal(pa[0], pb[0]) and torch.equal(pa[1], 2 * pb[0])
    with pytest.raises(AdamscopeError, match="different numbers"):
        list(aligned([stream([5]), iter([(0, (x[:10], x[:10]))])], what="t"))


def test_write_gradients_and_run_heatmap_norms(tmp_path: Path) -> None:
    path = write_gradients(CONS / "adamw" / "ckpt_20.pt", CONS / "adamw" / "ckpt_21.pt", tmp_path)
    df = pl.read_parquet(path)
    assert df.filter(pl.col("level") == "tensor").height == 28
    assert df.filter(pl.col("level") == "layer")["layer"].to_list() == [
        "embedding",
        "block.0",
        "block.1",
        "head",
    ]
    norms = exact_layer_grad_norms(CONS / "adamw")  # 20->21 exact; 21->24 skipped
    assert norms.columns[:4] == ["step", "layer", "depth", "grad_norm"]
    assert norms["step"].to_list() == [21] * 4
    want = _layer_truth(TRUTH["pairs"]["adamw/ckpt_21.pt"]["tensors"], "grad_norm")
    for row in norms.iter_rows(named=True):
        assert row["grad_norm"] == pytest.approx(want[row["layer"]]["grad_norm"], rel=1e-4)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(b - a) / np.linalg.norm(a))


def test_diff_matches_numpy_reference() -> None:
    """Relative changes against torch.load(weights_only=True) + float64 numpy."""
    a, b = CONS / "adamw" / "ckpt_20.pt", CONS / "adamw" / "ckpt_21.pt"
    df = diff(a, b, options=DiffOptions(chunk_elems=50))
    sds = [torch.load(p, weights_only=True) for p in (a, b)]
    names = [n for n, t in sds[0]["model"].items() if n != "lm_head.weight"]
    by_dim = [n for n in names if sds[0]["model"][n].dim() >= 2] + [
        n for n in names if sds[0]["model"][n].dim() < 2
    ]
    layer_of = assign_layers(names)
    b1, b2 = TRUTH["betas"]
    cat: dict[str, dict[str, list[list[np.ndarray]]]] = {}
    for pid, name in enumerate(by_dim):
        layer = layer_of[name].layer
        for side, sd in enumerate(sds):
            st = sd["optimizer"]["state"][pid]
            t = float(st["step"])
            m = st["exp_avg"].double().numpy().ravel()
            v = st["exp_avg_sq"].double().numpy().ravel()
            u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + TRUTH["eps"])
            w = sd["model"][name].double().numpy().ravel()
            for q, x in {"m": m, "v": v, "u": u, "weight": w}.items():
                cat.setdefault(layer, {}).setdefault(q, [[], []])[side].append(x)
    for row in df.iter_rows(named=True):
        for q, (xa, xb) in cat[row["layer"]].items():
            want = _rel(np.concatenate(xa), np.concatenate(xb))
            assert row[f"{q}_change"] == pytest.approx(want, rel=1e-5), (row["layer"], q)
    assert set(df["stage_b"].drop_nulls()) <= {"healthy", "vanishing", "primed", "unstable"}
    assert df.filter(pl.col("layer") == "block.0")["stage_b"].item() is not None  # 3280 coords


@pytest.fixture(scope="module")
def spiked_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run saved every step 10..20; before step 16 block.1's gradients are scaled 1000x."""
    sys.path.insert(0, str(FIX))
    try:
        import make_consecutive as mc
    finally:
        sys.path.remove(str(FIX))
    out = tmp_path_factory.mktemp("spiked")
    torch.set_num_threads(1)
    mc.train_run(
        out,
        "adamw",
        steps=20,
        save_at=set(range(10, 21)),
        grad_scale={16: {"transformer.h.1.": 1000.0}},
    )
    return out


def test_moved_first_ranks_the_perturbed_layer_first(spiked_run: Path) -> None:
    changes = layer_changes(spiked_run)
    assert changes.height == 10 * 4
    ranked = moved_first(changes, k=3.0, quantity="v")
    top = ranked.row(0, named=True)
    assert top["layer"] == "block.1" and top["first_step"] == 16 and top["rank"] == 1
    assert top["ratio"] > 100
    # m also jumps there first; the exact gradient norms show the spike at step 16 only in block.1
    assert moved_first(changes, quantity="m").row(0, named=True)["layer"] == "block.1"
    norms = exact_layer_grad_norms(spiked_run).filter(pl.col("layer") == "block.1")
    by_step = dict(zip(norms["step"], norms["grad_norm"], strict=True))
    assert by_step[16] > 300 * by_step[15]
    assert norms["consistent"].all()


def test_moved_first_rejects_unknown_quantity(spiked_run: Path) -> None:
    with pytest.raises(AdamscopeError, match="unknown quantity"):
        moved_first(spiked_run, quantity="grad")
