"""The verdict cites the hit and false-alarm rates its stage measured on the spike corpus, read
from the score table the corpus run wrote (adamscope/report/spike_scores.csv)."""

from __future__ import annotations

import csv

from adamscope.report.advice import CORPUS, corpus_line


def _row(signal: str) -> dict[str, str]:
    with open(CORPUS, newline="") as f:
        return next(r for r in csv.DictReader(f) if r["signal"] == signal)


def test_primed_and_unstable_cite_the_measured_rates() -> None:
    for stage in ("primed", "unstable"):
        row = _row(f"stage_{stage}")
        line = corpus_line(stage)
        assert line is not None
        assert f"preceded {row['hits']} of {row['spikes']} spikes" in line
        assert f"{float(row['fa_per_1k']):.2f}" in line or f"{float(row['fa_per_1k']):.3g}" in line


def test_a_stage_without_a_row_cites_nothing() -> None:
    assert corpus_line("no_such_stage") is None


def test_the_table_ships_with_the_package() -> None:
    assert CORPUS.is_file() and CORPUS.parent.name == "report"
