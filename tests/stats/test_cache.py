"""The disk cache of the null model's tables: the same numbers from disk as computed, atomic
files, never pickles, and off when asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adamscope.stats import cache, null


def test_cached_values_equal_computed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAMSCOPE_CACHE", str(tmp_path))
    calls = []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.array([[0.1, 0.2], [1e-300, np.inf]])

    a = cache.cached_array("t", (1, 0.9), compute)
    b = cache.cached_array("t", (1, 0.9), compute)
    assert len(calls) == 1 and np.array_equal(a, b)
    files = list((tmp_path / "t").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"  # no temp file left
    files[0].write_bytes(b"garbage")  # a damaged file is recomputed, not trusted
    assert np.array_equal(cache.cached_array("t", (1, 0.9), compute), a) and len(calls) == 2


def test_cache_off_and_null_tables_same_either_way(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ADAMSCOPE_CACHE", "off")
    off = null._rho_table_mc("rademacher", 0.9, 0.95, 30)
    monkeypatch.setenv("ADAMSCOPE_CACHE", str(tmp_path))
    null._rho_table.cache_clear()
    first = null._rho_table("rademacher", 0.9, 0.95, 30)
    null._rho_table.cache_clear()
    again = null._rho_table("rademacher", 0.9, 0.95, 30)  # from disk
    for x in (first, again):
        assert np.array_equal(x[0], off[0]) and np.array_equal(x[1], off[1])
    assert any((tmp_path / "null-rho").iterdir())
