"""Training logs never fail an analysis they were not asked for: an early save's empty
log_history is no error, and every auto-found log that is broken, hostile or huge (bad JSON,
nesting past the parser, a step of 1e30, a FIFO, a sparse file of GBs, a line of GBs) is skipped
with a warning naming it. Logs named with --log must be readable: one line, exit 2."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from _hostile_helpers import FIXTURES, bounded, cli, error_lines, fifo, sparse

from adamscope.config import AnalyzeOptions
from adamscope.errors import AdamscopeError
from adamscope.pipeline.run import _logs

CKPT = FIXTURES / "hf_trainer" / "gpt2" / "checkpoint-10"
GB = 1 << 30


def _run_folder(tmp: Path, *, history: list | None = None) -> Path:
    run = tmp / "run"
    shutil.copytree(CKPT, run / "checkpoint-10")
    if history is not None:
        state = run / "checkpoint-10" / "trainer_state.json"
        data = json.loads(state.read_text())
        data["log_history"] = history
        state.write_text(json.dumps(data))
    return run


def test_empty_log_history_is_an_early_save_not_an_error(tmp_path: Path) -> None:
    run = _run_folder(tmp_path, history=[])
    with bounded(120):
        rc, err = cli("analyze", run, "-o", tmp_path / "out", "-q")
    assert rc == 0, err
    assert not error_lines(err)
    assert (tmp_path / "out" / "manifest.json").is_file()
    assert not (tmp_path / "out" / "losses.parquet").exists()


def _deep(n: int) -> str:
    return "[" * n + "]" * n


# name -> how to make it in the run folder (where find_logs finds each of them)
BROKEN_LOGS = {
    "not_json": lambda d: (d / "trainer_state.json").write_text("{not json"),
    "deep_nesting": lambda d: (d / "trainer_state.json").write_text(
        '{"log_history": ' + _deep(200_000) + "}"
    ),
    "no_history": lambda d: (d / "trainer_state.json").write_text('{"global_step": 3}'),
    "fifo_state": lambda d: fifo(d / "trainer_state.json"),
    "sparse_state": lambda d: sparse(d / "trainer_state.json", 3 * GB, head=b'{"log_history":'),
    "fifo_csv": lambda d: fifo(d / "metrics.csv"),
    "sparse_csv": lambda d: sparse(d / "metrics.csv", 6 * GB, head=b"step,loss\n"),
    "fifo_jsonl": lambda d: fifo(d / "train.jsonl"),
    "huge_jsonl_line": lambda d: sparse(d / "train.jsonl", 2 * GB, head=b'{"step": 1, "x": "'),
    "bad_jsonl_line": lambda d: (d / "train.jsonl").write_text('{"step": 1, "loss": 2}\n{oops\n'),
    "huge_step_jsonl": lambda d: (d / "train.jsonl").write_text(
        '{"step": 1e30, "loss": 2}\n{"step": ' + "9" * 5000 + ', "loss": 2}\n'
    ),
    "huge_step_csv": lambda d: (d / "metrics.csv").write_text("step,loss\n1e30,2\ninf,3\n"),
    "tfevents_garbage": lambda d: (d / "events.out.tfevents.1.host").write_bytes(b"\xff" * 64),
}


@pytest.mark.parametrize("case", sorted(BROKEN_LOGS))
def test_auto_found_broken_logs_are_skipped_with_a_warning(
    case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    BROKEN_LOGS[case](run)
    with caplog.at_level(logging.WARNING), bounded(10, megabytes=200) as m:
        frames = _logs(tmp_path / "run", AnalyzeOptions())
    assert frames == {} or "losses" in frames
    if case not in ("huge_step_jsonl", "huge_step_csv"):  # those only lose the bad rows
        assert any(r.levelno >= logging.WARNING for r in caplog.records), case
    assert m["seconds"] < 10


def test_huge_steps_are_dropped_not_fatal(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.jsonl").write_text(
        '{"step": 1e30, "loss": 5}\n{"step": "inf", "loss": 4}\n{"step": 7, "loss": 3}\n'
    )
    frames = _logs(run, AnalyzeOptions())
    assert frames["losses"]["step"].to_list() == [7]


def test_a_broken_log_does_not_fail_the_analysis(tmp_path: Path) -> None:
    run = _run_folder(tmp_path)
    fifo(run / "metrics.csv")
    (run / "train.jsonl").write_text("{oops\n")
    with bounded(120):
        rc, err = cli("analyze", run, "-o", tmp_path / "out", "-q")
    assert rc == 0, err
    assert (tmp_path / "out" / "manifest.json").is_file()
    assert (tmp_path / "out" / "losses.parquet").is_file()  # the good trainer_state.json


@pytest.mark.parametrize("kind", ["fifo", "sparse"])
def test_a_named_log_that_is_hostile_is_one_line(kind: str, tmp_path: Path) -> None:
    log_file = tmp_path / "train.jsonl"
    if kind == "fifo":
        fifo(log_file)
    else:
        sparse(log_file, 5 * GB, head=b'{"step": 1, "loss": "')
    with bounded(10, megabytes=200):
        with pytest.raises(AdamscopeError) as e:
            _logs(tmp_path, AnalyzeOptions(logs=(log_file,)))
    assert str(log_file) in str(e.value) and "\n" not in str(e.value)


def test_a_log_of_ever_new_keys_is_linear_not_quadratic(tmp_path: Path) -> None:
    """30,000 JSONL records, each with a key no other record has: lines x keys would be 9e8 cells
    (minutes and GBs when built densely). Read in linear time; the sparse keys beyond what a
    metrics table holds are dropped with a warning, the loss (logged on every line) is kept."""
    run = tmp_path / "run"
    run.mkdir()
    n = 30_000
    lines = (json.dumps({"step": i, "loss": 1.0 + i / n, f"junk/{i}": i}) for i in range(n))
    (run / "train.jsonl").write_text("\n".join(lines) + "\n")
    with bounded(60, megabytes=600) as used:
        frames = _logs(run, AnalyzeOptions())
    losses = frames["losses"]
    assert losses["step"].to_list() == list(range(n))
    assert losses["loss"][n - 1] == pytest.approx(1.0 + (n - 1) / n)
    assert used["peak_mb"] < 600


def test_metrics_csv_with_a_huge_step_through_the_cli(tmp_path: Path) -> None:
    """Lightning's metrics.csv beside a checkpoint, one row with step 1e30: that row is dropped,
    the analysis and its losses table are whole."""
    import polars as pl

    run = _run_folder(tmp_path)
    (run / "metrics.csv").write_text("step,train_loss\n1e30,5.0\n3,4.0\n9,3.5\n")
    with bounded(120):
        rc, err = cli("analyze", run, "-o", tmp_path / "out", "-q")
    assert rc == 0, err
    assert not error_lines(err)
    losses = pl.read_parquet(tmp_path / "out" / "losses.parquet")
    assert 3 in losses["step"].to_list() and 9 in losses["step"].to_list()
    assert losses["step"].max() < 1 << 62
