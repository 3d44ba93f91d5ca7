"""Shared test helpers: where the committed fixtures live."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


def pytest_configure(config: pytest.Config) -> None:
    """The null model's disk cache goes to a fresh folder per test session, so tests always
    exercise the current code (not tables a previous version left in ~/.cache/adamscope)."""
    import os
    import tempfile

    os.environ.setdefault("ADAMSCOPE_CACHE", tempfile.mkdtemp(prefix="adamscope-cache-"))
