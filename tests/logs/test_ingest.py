"""Training-log ingestion from files written by the real writers (fixtures/make_logs.py,
fixtures/make_hf_trainer.py); truth = the values the writers were given."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from adamscope.errors import AdamscopeError
from adamscope.logs import find_logs, ingest, ingest_layer_norms, write_logs

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / "fixtures" / "logs"
HF = ROOT / "fixtures" / "hf_trainer" / "gpt2"


@pytest.fixture(scope="module")
def truth() -> dict:
    return json.loads((LOGS / "truth.json").read_text())


def _event_file() -> Path:
    (f,) = sorted((LOGS / "tensorboard").glob("events.out.tfevents.*"))
    return f


def test_tensorboard_scalars_match_what_summarywriter_wrote(truth: dict) -> None:
    pytest.importorskip("tensorboard")
    df = ingest(_event_file())
    rows = truth["rows"]
    assert df["step"].to_list() == [r["step"] for r in rows]
    # TensorBoard stores float32: compare at float32 precision.
    np.testing.assert_allclose(df["loss"].to_numpy(), [r["loss"] for r in rows], rtol=1e-6)
    np.testing.assert_allclose(
        df["grad_norm"].to_numpy(), [r["grad_norm"] for r in rows], rtol=1e-6
    )
    np.testing.assert_allclose(df["lr"].to_numpy(), [r["lr"] for r in rows], rtol=1e-6)
    np.testing.assert_allclose(
        df["perplexity"].to_numpy(), np.exp(df["loss"].to_numpy()), rtol=1e-12
    )


def test_tensorboard_per_layer_norms(truth: dict) -> None:
    pytest.importorskip("tensorboard")
    df = ingest_layer_norms(_event_file())
    names = sorted(truth["norms"]["1"])
    assert sorted(df["name"].unique().to_list()) == names
    assert len(df) == len(truth["rows"]) * len(names)
    for r in df.filter(df["step"] == 37).iter_rows(named=True):
        assert r["grad_norm"] == pytest.approx(truth["norms"]["37"][r["name"]], rel=1e-6)


def test_tensorboard_missing_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboard.backend.event_processing", None)
    with pytest.raises(AdamscopeError, match="pip install tensorboard"):
        ingest(_event_file())


def test_lightning_metrics_csv_drops_validation_rows(truth: dict) -> None:
    path = LOGS / "lightning" / "version_0" / "metrics.csv"
    df = ingest(path)
    rows = truth["rows"]
    assert df["step"].to_list() == [r["step"] for r in rows]
    np.testing.assert_allclose(df["loss"].to_numpy(), [r["loss"] for r in rows], rtol=1e-12)
    assert df["grad_norm"].null_count() == len(df)


def test_jsonl_with_named_keys(truth: dict) -> None:
    df = ingest(LOGS / "run.jsonl", step_key="iter")
    assert df["step"].to_list() == [r["step"] for r in truth["rows"]]
    np.testing.assert_allclose(df["loss"].to_numpy(), [r["loss"] for r in truth["rows"]], rtol=0)
    with pytest.raises(AdamscopeError, match=r"run.jsonl.*'opt/lr'.*--loss-key"):
        ingest(LOGS / "run.jsonl", step_key="iter", loss_key="nope")
    with pytest.raises(AdamscopeError, match="--step-key"):
        ingest(LOGS / "run.jsonl", step_key="nope")


def test_csv_with_custom_columns(tmp_path: Path) -> None:
    p = tmp_path / "log.csv"
    p.write_text("it,objective,note\n3,2.5,a\n1,3.0,b\n2,,c\n")
    df = ingest(p, loss_key="objective", step_key="it")
    assert df["step"].to_list() == [1, 3]
    assert df["loss"].to_list() == [3.0, 2.5]
    assert df["perplexity"][0] == pytest.approx(math.exp(3.0), rel=1e-15)


def test_trainer_state_from_a_real_trainer_run() -> None:
    found = find_logs(HF)
    assert [p.parent.name for p in found] == ["checkpoint-10", "checkpoint-20", "checkpoint-30"]
    df = ingest(HF)
    history = json.loads((HF / "checkpoint-30" / "trainer_state.json").read_text())["log_history"]
    train = [h for h in history if "loss" in h]
    assert df["step"].to_list() == [h["step"] for h in train]
    assert df["loss"].to_list() == [h["loss"] for h in train]
    assert df["grad_norm"].to_list() == [h["grad_norm"] for h in train]
    assert df["lr"].to_list() == [h["learning_rate"] for h in train]
    # the latest checkpoint's (cumulative) history wins for steps logged in several files
    assert set(df["source"].to_list()) == {str(HF / "checkpoint-30" / "trainer_state.json")}


def test_find_logs_in_a_run_folder() -> None:
    names = {p.name for p in find_logs(LOGS)}
    assert "metrics.csv" in names and "run.jsonl" in names
    assert any(n.startswith("events.out.tfevents") for n in names)
    assert find_logs(LOGS / "missing") == []


def test_write_logs_skips_a_run_without_logs(tmp_path: Path) -> None:
    assert write_logs(tmp_path / "out", tmp_path) == []
    with pytest.raises(AdamscopeError, match="no training loss"):
        ingest(tmp_path)
