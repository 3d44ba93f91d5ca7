"""Fixtures for the report tests: synthetic tables, and a headless Chromium (installed when missing)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cdp import Browser, find_chromium  # noqa: E402
from synth import make_tables  # noqa: E402


@pytest.fixture(scope="session")
def small_tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 layers x 12 checkpoints; layers 0-1 walk the stages; a loss spike after step 800."""
    return make_tables(tmp_path_factory.mktemp("small") / "tables")


@pytest.fixture(scope="session")
def small_report(small_tables: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adamscope.report import write_report

    return write_report(small_tables, tmp_path_factory.mktemp("report") / "report.html")


@pytest.fixture(scope="session")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`adamscope.report.demo`: simulate -> analyze -> logs -> figures -> report."""
    from adamscope.report import demo

    return demo(tmp_path_factory.mktemp("demo"))


def _install_chromium() -> str | None:
    """Debian's chromium package, installed with apt-get when it is missing (CI machines are root)."""
    found = find_chromium()
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=900)
    except (OSError, subprocess.SubprocessError):
        return None
    return find_chromium()


@pytest.fixture(scope="session")
def chromium() -> str:
    path = _install_chromium()
    if path is None:
        pytest.skip("chromium is not installed and `apt-get install -y chromium` failed")
    return path


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[Browser]:
    b = Browser(chromium, tmp_path / "profile", width=1280, height=1000)
    try:
        b.open_page()
        yield b
    finally:
        b.close()
