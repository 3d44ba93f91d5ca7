"""Docs generated from code stay in step with it."""

from pathlib import Path

from adamscope.tables.docs import render

ROOT = Path(__file__).resolve().parents[1]


def test_tables_md_matches_schema():
    assert (ROOT / "docs" / "tables.md").read_text() == render(), (
        "docs/tables.md is stale: python -m adamscope.tables.docs > docs/tables.md"
    )
