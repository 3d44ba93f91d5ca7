"""Our Hartigan dip (numba, nogil) against `diptest`, the reference implementation of the dip.

Reference: `diptest.dipstat` (the Python package's C++ port of Hartigan & Hartigan's AS 217, with
R diptest's corrections) on the same sorted float64 points; tolerance 1e-12 absolute (the two
accumulate the same integer counts and float64 slopes in different orders).
"""

from __future__ import annotations

import threading
import time

import diptest
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adamscope.stats import bimodality, fused

pytestmark = pytest.mark.skipif(not fused.available(), reason="numba is not available")
TOL = 1e-12


def _sample(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "uniform":
        return rng.random(n)
    if kind == "normal":
        return rng.standard_normal(n)
    if kind == "bimodal":  # r's shape on an unstable layer: +-1 plus noise
        return np.concatenate([rng.normal(-1, 0.1, n // 2), rng.normal(1, 0.1, n - n // 2)])
    if kind == "unequal modes":
        return np.concatenate([rng.normal(0, 1, n - n // 5), rng.normal(4, 0.5, n // 5)])
    if kind == "ties":  # few distinct values: every point shares its value
        return rng.integers(0, max(2, n // 5), n).astype(np.float64)
    if kind == "three values":
        return rng.integers(0, 3, n).astype(np.float64)
    if kind == "zeros and normal":  # r = 0 where v = 0, next to healthy coordinates
        return np.concatenate([np.zeros(n // 3), rng.standard_normal(n - n // 3)])
    if kind == "rounded":
        return np.round(rng.standard_normal(n), 1)
    if kind == "float32":
        return rng.standard_normal(n).astype(np.float32).astype(np.float64)
    if kind == "heavy tails":
        return rng.standard_t(1.5, n)
    raise AssertionError(kind)


KINDS = (
    "uniform",
    "normal",
    "bimodal",
    "unequal modes",
    "ties",
    "three values",
    "zeros and normal",
    "rounded",
    "float32",
    "heavy tails",
)


@pytest.mark.parametrize("kind", KINDS)
def test_dip_matches_diptest_on_a_seeded_sweep(kind: str) -> None:
    rng = np.random.default_rng(list(kind.encode()))
    sizes = [*range(4, 40), 50, 64, 100, 257, 1000, 4096, 10_000, 65_536, 100_000]
    for n in sizes:
        for _ in range(8 if n <= 100 else 2):
            x = np.sort(_sample(kind, n, rng))
            want = diptest.dipstat(x, sort_x=False)
            got = fused.dip_sorted(x)
            assert abs(got - want) <= TOL, (kind, n, got, want)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from([-3.0, -1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 7.5])
        | st.integers(-5, 5).map(float)
        | st.floats(-1e3, 1e3, width=32),
        min_size=4,
        max_size=60,
    )
)
def test_dip_matches_diptest_on_any_small_sample(values: list[float]) -> None:
    # arbitrary float32 points (what the dips see), many tied or evenly spaced, in any arrangement.
    # Not float64 subnormal spacings: there diptest's arithmetic underflows ([0, 0, 1e-310,
    # 1e-310] gives 0.125 against 0.25 for [0, 0, 1, 1]; ours gives 0.25 for both)
    x = np.sort(np.array(values, np.float64))
    assert abs(fused.dip_sorted(x) - diptest.dipstat(x, sort_x=False)) <= TOL


def test_evenly_spaced_points_have_dip_zero_as_in_diptest() -> None:
    # collinear points: diptest (allow_zero) reports 0, not the empirical distribution's 1 / 2n;
    # moving a point or doubling each one brings the gap back
    rng = np.random.default_rng(11)
    for n in range(4, 120):
        x = np.arange(n, dtype=np.float64)
        assert fused.dip_sorted(x) == diptest.dipstat(x) == 0.0
        y = np.sort(np.where(np.arange(n) == rng.integers(n), x + 0.5, x))
        pairs = np.repeat(x, 2)
        for z in (y, pairs):
            assert abs(fused.dip_sorted(z) - diptest.dipstat(z, sort_x=False)) <= TOL


def test_the_dip_is_scale_and_shift_free() -> None:
    x = np.sort(np.random.default_rng(2).standard_normal(5000))
    d = fused.dip_sorted(x)
    for scale, shift in ((1e-30, 0.0), (1e30, 0.0), (3.0, 1e3), (1.0, -7.0)):
        assert fused.dip_sorted(x * scale + shift) == pytest.approx(d, abs=1e-9)


def test_constant_and_two_point_samples() -> None:
    assert fused.dip_sorted(np.full(10, 3.0)) == 0.0
    assert bimodality.dip(np.full(10, 3.0, np.float32)) == (0.0, 1.0)
    x = np.array([0.0, 0.0, 1.0, 1.0])  # two equal halves: the largest dip of 4 points
    assert fused.dip_sorted(x) == pytest.approx(diptest.dipstat(x), abs=TOL)
    assert bimodality.dip(np.arange(3.0)) == (pytest.approx(np.nan, nan_ok=True),) * 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dip_and_p_value_are_diptests(dtype: type) -> None:
    # bimodality.dip (radix sort for float32, our dip, diptest's p-value table) = diptest.diptest
    rng = np.random.default_rng(7)
    for n in (4, 30, 1000, 65_536):
        for x in (rng.standard_normal(n), rng.choice([-1.0, 1.0], n) + 0.3 * rng.random(n)):
            x = x.astype(dtype)
            d, p = bimodality.dip(x)
            want_d, want_p = diptest.diptest(x.astype(np.float64))
            assert abs(d - want_d) <= TOL
            assert abs(p - want_p) <= TOL


def test_without_numba_diptest_computes_the_dip(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(3).standard_normal(500).astype(np.float32)
    want = bimodality.dip(x)
    monkeypatch.setattr(fused, "available", lambda: False)
    monkeypatch.setattr(fused, "dip_sorted", None)  # must not be reached
    assert bimodality.dip(x) == pytest.approx(want, abs=TOL)


def test_the_kernel_releases_the_gil() -> None:
    # another Python thread runs all through a dip: it stamps times in each eighth of the call
    # (diptest's, which holds the GIL for most of its work, leaves eighths without a stamp)
    assert fused._dip_kernel().dip_sorted.targetoptions["nogil"]
    x = np.sort(np.random.default_rng(0).standard_normal(2_000_000))
    stamps: list[float] = []
    done = threading.Event()

    def stamp() -> None:
        while not done.is_set():
            stamps.append(time.perf_counter())

    t = threading.Thread(target=stamp)
    t.start()
    try:
        time.sleep(0.01)
        t0 = time.perf_counter()
        fused.dip_sorted(x)
        t1 = time.perf_counter()
    finally:
        done.set()
        t.join()
    per_eighth = np.histogram(stamps, bins=8, range=(t0, t1))[0]
    assert (per_eighth > 0).all(), per_eighth


def test_dips_later_gives_each_samples_dip() -> None:
    rng = np.random.default_rng(5)
    samples = [rng.standard_normal(n).astype(np.float32) for n in (3, 10, 5000, 65_536)]
    got = [f.result() for f in bimodality.dips_later(*samples)]
    want = [bimodality.dip(x) for x in samples]
    np.testing.assert_array_equal(np.array(got), np.array(want))
