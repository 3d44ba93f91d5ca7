"""Loss-spike detection on logs whose spikes are known by construction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from adamscope.logs import ingest
from adamscope.logs.spikes import SpikeRule, detect

LOGS = Path(__file__).resolve().parents[2] / "fixtures" / "logs"


def _frame(y: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame({"step": np.arange(1, len(y) + 1), "loss": y})


def test_fixture_spike_is_found_and_recovers() -> None:
    truth = json.loads((LOGS / "truth.json").read_text())["spike"]
    out = detect(ingest(LOGS / "lightning" / "version_0" / "metrics.csv"))
    (spike,) = out["spikes"]
    assert spike["start"] == truth["start"]
    assert spike["recovered"] and spike["end"] < truth["end_before"]
    assert out["t2"] == truth["start"] and out["t1"] == spike["end"] and out["t3"] is None


def test_noise_alone_gives_no_spike() -> None:
    rng = np.random.default_rng(0)
    y = 3.0 - np.linspace(0, 1, 2000) + rng.normal(0, 0.02, 2000)
    assert detect(_frame(y))["spikes"] == []


def test_recovered_then_flat_gives_t1_t2_t3() -> None:
    rng = np.random.default_rng(1)
    y = 2.0 + rng.normal(0, 0.01, 600)
    y[200:220] += 2.0  # recovers at 220
    y[400:430] += 3.0  # then settles 1.0 higher for good
    y[430:] += 1.0
    out = detect(_frame(y))
    first, second = out["spikes"]
    assert (first["start"], first["recovered"], first["end"]) == (201, True, 221)
    assert (second["start"], second["recovered"], second["end"]) == (401, False, 431)
    assert (out["t1"], out["t2"], out["t3"]) == (221, 401, 431)


def test_rule_parameters_matter() -> None:
    y = np.full(100, 2.0)
    y[50] = 2.5  # z = 0.5 / (1e-4 * 2) with a flat baseline: far above any threshold
    assert len(detect(_frame(y))["spikes"]) == 1
    assert detect(_frame(y), rule=SpikeRule(rel_floor=1.0))["spikes"] == []


def test_missing_columns_raise() -> None:
    from adamscope.errors import AdamscopeError

    with pytest.raises(AdamscopeError, match="needs columns"):
        detect(pl.DataFrame({"step": [1, 2]}))
