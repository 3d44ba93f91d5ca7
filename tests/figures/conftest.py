"""A simulated run that walks every stage, and its tables computed independently (_ref_tables)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adamscope.sim.section4 import simulate


@pytest.fixture(scope="session")
def sim_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate(tmp_path_factory.mktemp("figsim") / "run", save_every=40)


@pytest.fixture(scope="session")
def sim_tables(sim_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from _ref_tables import build

    return build(sim_run, tmp_path_factory.mktemp("figtables"))
