"""summarize() against float64 numpy, on random and adversarial state; invariances of the sketch."""

from __future__ import annotations

import math
import pickle

import diptest
import numpy as np
import pytest
import torch
from _stats_helpers import assert_matches, reference, sketch_of

from adamscope.config import StatsConfig
from adamscope.errors import AdamscopeError
from adamscope.stats.engine import merge_layer, summarize, tensor_state_from_tensors
from adamscope.stats.sketch import LOG_LO, TensorSketch
from adamscope.tables.rows import stats_row
from adamscope.vocab import HyperParams, TensorState

HP = HyperParams(beta1=0.9, beta2=0.95, eps=1e-8, lr=1e-3, weight_decay=0.1)
CPU = StatsConfig(device="cpu")


@pytest.fixture(autouse=True, params=["numba", "torch"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on both CPU paths: the fused numba kernel and the torch ops."""
    monkeypatch.setenv("ADAMSCOPE_KERNEL", request.param)
    return request.param


def _state(n: int, seed: int = 0, scale: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(n, generator=gen) * scale
    v = m * m * (1 + torch.rand(n, generator=gen)) + (scale * torch.rand(n, generator=gen)) ** 2
    return m, v


def test_random_state_matches_float64_reference() -> None:
    m, v = _state(300_000)
    row = stats_row(sketch_of(m, v, HP, 123.0))
    assert_matches(row, reference(m, v, HP, 123.0))
    assert 0.0 < row["suppression"] <= 1.0


def test_mean_much_larger_than_std() -> None:
    # every u ~ 0.5 +- 1e-5: naive sums of squares lose all digits of the variance
    gen = torch.Generator().manual_seed(1)
    n = 200_000
    v = torch.full((n,), 4e-6)
    m = (1 + 2e-5 * torch.randn(n, generator=gen)) * 1e-3
    hp = HyperParams(beta1=0.9, beta2=0.95, eps=0.0, bias_correction=False)
    row = stats_row(sketch_of(m, v, hp, 10.0))
    ref = reference(m, v, hp, 10.0)
    assert row["u_std"] == pytest.approx(ref["u_std"], rel=1e-4)
    assert_matches(row, ref)


def test_nonfinite_and_zero_v_are_counted_and_excluded() -> None:
    m, v = _state(100_000, seed=3)
    m[5] = float("nan")
    v[17] = float("inf")
    m[99_999] = float("-inf")
    v[40_000:40_010] = float("nan")
    m[1000:1100], v[1000:1100] = 0.0, 0.0  # never-touched coordinates
    sk = sketch_of(m, v, HP, 50.0)
    row = stats_row(sk)
    ref = reference(m, v, HP, 50.0)
    assert (row["nonfinite"], row["zero_v"]) == (13, 100)
    assert_matches(row, ref)
    assert math.isfinite(row["u_min"]) and math.isfinite(row["r_max"])
    h = sk.hists
    assert h["u"].sum() == h["r"].sum() == h["log10_sqrt_vhat"].sum() == 100_000 - 13
    assert h["log10_sqrt_vhat"][0] == 100  # the zero bin of log10 sqrt(v_hat)
    assert np.isfinite(sk.sample_u).all() and np.isfinite(sk.sample_r).all()


def test_whole_chunk_of_nonfinite_values() -> None:
    m, v = _state(5000, seed=4)
    m[:3000] = float("nan")
    sk = summarize(
        tensor_state_from_tensors("w", m, v, step=9.0, hp=HP),
        StatsConfig(device="cpu", chunk_elems=1000),
    )
    assert stats_row(sk)["nonfinite"] == 3000
    assert_matches(stats_row(sk), reference(m, v, HP, 9.0))


@pytest.mark.parametrize(
    "hp, convention",
    [
        (HyperParams(beta1=0.9, beta2=0.999, eps=1e-8, amsgrad=True), "torch"),
        (HyperParams(beta1=0.9, beta2=0.95, eps=1e-8, bias_correction=False), "torch"),
        (HyperParams(beta1=0.9, beta2=0.95, eps=1e-7, eps_inside_sqrt=True), "torch"),
        (HyperParams(beta1=0.9, beta2=0.95, eps=1e-3), "paper"),
        (HyperParams(beta1=0.8, beta2=0.99, eps=1e-6, amsgrad=True), "paper"),
    ],
)
def test_variants_match_reference(hp: HyperParams, convention: str) -> None:
    m, v = _state(150_000, seed=5)
    vmax = (
        v * (1 + torch.rand(v.shape, generator=torch.Generator().manual_seed(6)))
        if hp.amsgrad
        else None
    )
    cfg = StatsConfig(device="cpu", convention=convention)  # type: ignore[arg-type]
    row = stats_row(sketch_of(m, v, hp, 77.0, cfg=cfg, vmax=vmax))
    assert_matches(row, reference(m, v, hp, 77.0, vmax=vmax, convention=convention))


def test_bf16_state_is_read_as_its_float32_values() -> None:
    m, v = _state(50_000, seed=7)
    m16, v16 = m.bfloat16(), v.bfloat16()
    row = stats_row(sketch_of(m16, v16, HP, 30.0))
    assert_matches(row, reference(m16.float(), v16.float(), HP, 30.0))


def test_values_beyond_the_bound_are_kept() -> None:
    # an edited state: |r| far above the Cauchy-Schwarz bound of (0.9, 0.95)
    m, v = _state(20_000, seed=8)
    m[:50] = 1.0
    v[:50] = 1e-6
    sk = sketch_of(m, v, HP, 200.0)
    row = stats_row(sk)
    ref_r = (1.0 / (1 - 0.9**200)) / math.sqrt(1e-6 / (1 - 0.95**200))
    assert row["r_max"] == pytest.approx(ref_r, rel=1e-6)
    assert sk.hists["r"][-1] == 50 and sk.hists["u"][-1] == 50  # overflow bins
    assert sk.hists["r"].sum() == 20_000
    assert ("r", sk.half_width, math.inf, 50) in sk.histograms()


def test_histograms_agree_with_numpy() -> None:
    m, v = _state(100_000, seed=9)
    m[:7], v[:7] = 0.0, 0.0
    sk = sketch_of(m, v, HP, 40.0)
    md, vd = m.double().numpy(), v.double().numpy()
    bc1, bc2 = 1 - 0.9**40, 1 - 0.95**40
    r = np.where(vd == 0, 0, md / bc1 / np.sqrt(np.where(vd == 0, 1, vd / bc2)))
    u = md / bc1 / (np.sqrt(vd / bc2) + 1e-8)
    rows = sk.histograms()
    for q, x in [("u", u), ("r", r), ("log10_abs_r", np.log10(np.abs(r[r != 0])))]:
        e = sk.edges(q)
        ref, _ = np.histogram(x, bins=e)
        got = sk.hists[q][1:-1]
        # float32 vs float64 may move a value across an edge: allow a handful
        assert np.abs(got - ref).sum() <= 10, q
    assert sk.hists["log10_abs_r"][0] == 7  # zeros
    assert sum(c for q, lo, hi, c in rows if q == "log10_sqrt_vhat") == 100_000
    lo_zero = [(lo, hi) for q, lo, hi, c in rows if q == "log10_abs_u" and lo == -math.inf]
    assert lo_zero == [(-math.inf, float(LOG_LO))]


def _assert_same_sketch(a: TensorSketch, b: TensorSketch, rel: float = 1e-12) -> None:
    for f in ("numel", "nonfinite", "zero_v", "below_eps", "u_min", "u_max", "r_min", "r_max"):
        assert getattr(a, f) == getattr(b, f), f
    for q in a.hists:
        np.testing.assert_array_equal(a.hists[q], b.hists[q])
    np.testing.assert_array_equal(a.sample_idx, b.sample_idx)
    np.testing.assert_array_equal(a.sample_u, b.sample_u)
    np.testing.assert_array_equal(a.sample_r, b.sample_r)
    for mo in ("mu", "mr"):
        x, y = getattr(a, mo), getattr(b, mo)
        assert x.n == y.n
        sd = math.sqrt(y.m2 / y.n)
        assert x.mean == pytest.approx(y.mean, abs=rel * sd), (mo, "mean")
        assert x.m2 == pytest.approx(y.m2, rel=rel), (mo, "m2")
        assert x.m3 / (x.n * sd**3) == pytest.approx(y.m3 / (y.n * sd**3), abs=rel), (mo, "m3")
        assert x.m4 == pytest.approx(y.m4, rel=rel), (mo, "m4")
    for f in ("v_sum", "m_sq", "vhat_sum"):
        assert getattr(a, f) == pytest.approx(getattr(b, f), rel=rel), f


def test_invariant_to_chunk_size() -> None:
    m, v = _state(400_000, seed=10)
    m[3] = float("nan")
    base = summarize(tensor_state_from_tensors("w", m, v, step=60.0, hp=HP), CPU)
    for chunk in (999, 65_536, 300_001):
        cfg = StatsConfig(device="cpu", chunk_elems=chunk)
        sk = summarize(tensor_state_from_tensors("w", m, v, step=60.0, hp=HP), cfg)
        _assert_same_sketch(sk, base, rel=1e-6)  # other block sums: float32 rounding only
        assert stats_row(sk)["dip_r"] == stats_row(base)["dip_r"]


@pytest.mark.parametrize("global_starts", [False, True])
def test_pieces_merge_into_the_whole_in_any_order(global_starts: bool) -> None:
    n = 300_000
    m, v = _state(n, seed=11)
    cfg = StatsConfig(device="cpu", chunk_elems=50_000)
    whole = summarize(tensor_state_from_tensors("w", m, v, step=60.0, hp=HP), cfg)
    bounds = [0, 70_001, 70_001 + 65_536 * 2, n]
    pieces = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        inner = tensor_state_from_tensors("w", m[a:b], v[a:b], step=60.0, hp=HP)

        def chunks(k: int, inner: TensorState = inner, a: int = a):  # noqa: ANN202
            for s, cm, cv, cx in inner.chunks(k):
                yield (a + s if global_starts else s), cm, cv, cx

        ts = TensorState(
            name="w", shape=(b - a,), step=60.0, hp=HP, dtype="float32", chunks=chunks, piece=(a, n)
        )
        pieces.append(summarize(ts, cfg))
    merged = [
        pieces[i].merge(pieces[j]).merge(pieces[k]) for i, j, k in ([0, 1, 2], [2, 0, 1], [1, 2, 0])
    ]
    for sk in merged:
        _assert_same_sketch(sk, merged[0], rel=1e-12)  # merge order: float64 rounding only
        _assert_same_sketch(sk, whole, rel=1e-6)  # other block boundaries: float32 rounding
        _rows_close(stats_row(sk), stats_row(whole), rel=1e-6)


def _rows_close(a: dict, b: dict, rel: float = 1e-12) -> bool:
    scale = {"u_mean": "u_rms", "r_mean": "r_rms"}
    for k in a:
        if isinstance(a[k], float):
            tol = rel * abs(b[scale[k]]) if k in scale else 0.0
            assert a[k] == pytest.approx(b[k], rel=rel, abs=tol, nan_ok=True), k
        else:
            assert a[k] == b[k], k
    return True


def test_merge_rejects_different_tensors() -> None:
    m, v = _state(1000)
    a = sketch_of(m, v, HP, 5.0, name="a")
    b = sketch_of(m, v, HP, 6.0, name="a")
    with pytest.raises(AdamscopeError, match="^a: "):
        a.merge(b)


def test_state_round_trip_through_pickle() -> None:
    m, v = _state(80_000, seed=12)
    sk = sketch_of(m, v, HP, 33.0)
    back = TensorSketch.from_state(pickle.loads(pickle.dumps(sk.to_state())))
    _assert_same_sketch(back, sk, rel=0)
    _rows_close(stats_row(back), stats_row(sk), rel=0.0)
    assert back.histograms() == sk.histograms()


def test_reader_yielding_too_few_elements_is_an_error() -> None:
    m, v = _state(1000)
    inner = tensor_state_from_tensors("w", m, v, step=5.0, hp=HP)
    ts = TensorState(name="w", shape=(2000,), step=5.0, hp=HP, dtype="float32", chunks=inner.chunks)
    with pytest.raises(AdamscopeError, match="^w: the reader yielded 1000 elements"):
        summarize(ts, CPU)


def test_small_tensor_sample_is_the_whole_tensor() -> None:
    m, v = _state(3000, seed=13)
    sk = sketch_of(m, v, HP, 5.0)
    row = stats_row(sk)
    assert row["dip_n"] == 3000
    r = np.sort(sk.sample_r.astype(np.float64))
    assert row["dip_r"] == pytest.approx(diptest.dipstat(r), abs=1e-12)


def test_empty_tensor() -> None:
    e = torch.zeros(0)
    row = stats_row(sketch_of(e, e, HP, 5.0))
    assert row["numel"] == 0 and math.isnan(row["u_mean"]) and row["stage"] is None


def _r_state(n: int, seed: int, modes: float = 0.7) -> tuple[torch.Tensor, torch.Tensor, float]:
    """r = +-modes + 0.15 N(0, 1) (one bell when modes = 0), built through m with v = 1."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.sign(torch.randn(n, generator=gen)) * modes + 0.15 * torch.randn(n, generator=gen)
    t = 100.0
    m = r * (1 - 0.9**t) / math.sqrt(1 - 0.95**t)
    return m, torch.ones(n), t


@pytest.mark.parametrize("kind, n", [("unimodal", 600_000), ("bimodal", 250_000)])
def test_sample_dip_is_close_to_full_dip(kind: str, n: int) -> None:
    if kind == "bimodal":
        m, v, t = _r_state(n, seed=14)
    else:
        m, v, t = _r_state(n, seed=15, modes=0.0)
    sk = sketch_of(m, v, HP, t)
    row = stats_row(sk)
    md, vd = m.double().numpy(), v.double().numpy()
    r = md / (1 - 0.9**t) / np.sqrt(vd / (1 - 0.95**t))
    full = diptest.dipstat(r)
    assert abs(row["dip_r"] - full) < 0.005, (row["dip_r"], full)
    assert row["dip_n"] <= 65_536 and row["dip_n"] > 60_000
    assert (full > 0.05) == (kind == "bimodal")


def test_merge_layer_weighs_tensors_by_numel() -> None:
    m1, v1, t = _r_state(300_000, seed=16)
    m2, v2 = _state(100_000, seed=17)
    a = sketch_of(m1, v1, HP, t, name="blocks.0.a")
    b = sketch_of(m2, v2, HP, t, name="blocks.0.b")
    layer = merge_layer([a, b])
    assert stats_row(layer)["dip_n"] == 65_536
    # the first 3/4 of the layer sample come from a (|r| ~ 0.7); b's r are tiny
    assert layer.sample_r.size == 65_536
    _rows_close(stats_row(merge_layer([b, a])), stats_row(layer))
    md = np.concatenate([m1.double().numpy(), m2.double().numpy()])
    vd = np.concatenate([v1.double().numpy(), v2.double().numpy()])
    r = md / (1 - 0.9**t) / np.sqrt(vd / (1 - 0.95**t))
    row = stats_row(layer)
    assert row["numel"] == 400_000
    assert row["r_std"] == pytest.approx(r.std(), rel=1e-5)
    assert row["r_rms"] == pytest.approx(np.sqrt(np.mean(r * r)), rel=1e-5)
    assert abs(row["dip_r"] - diptest.dipstat(r)) < 0.006
    for q in layer.hists:
        np.testing.assert_array_equal(layer.hists[q], a.hists[q] + b.hists[q])


def test_layer_sample_does_not_depend_on_merge_order() -> None:
    """A layer folded tensor by tensor (as tables.checkpoint does) keeps the same sample points
    whatever order its tensors arrive in (readers differ: storage order, group order)."""
    t = 40
    parts = [
        sketch_of(*_state(n, seed=30 + i), HP, t, name=f"h.0.{c}")
        for i, (n, c) in enumerate([(90_000, "a"), (50_000, "b"), (20_000, "c")])
    ]
    a, b, c = parts
    one = merge_layer([merge_layer([a, b], name="L"), c], name="L")
    two = merge_layer([merge_layer([c, a], name="L"), b], name="L")
    assert one.sample_u.size == 65_536
    np.testing.assert_array_equal(np.sort(one.sample_u), np.sort(two.sample_u))
    np.testing.assert_array_equal(np.sort(one.sample_r), np.sort(two.sample_r))
    assert stats_row(one)["dip_r"] == stats_row(two)["dip_r"]
    # numel-weighted: each tensor's share of the sample is close to its share of coordinates
    share = {s.name: 0 for s in parts}
    for s in parts:
        share[s.name] = np.isin(one.sample_u, s.sample_u).sum() / one.sample_u.size
    assert abs(share["h.0.a"] - 90 / 160) < 0.02 and abs(share["h.0.c"] - 20 / 160) < 0.02
