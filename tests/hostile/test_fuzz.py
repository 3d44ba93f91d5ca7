"""Property: whatever bytes a real fixture is mutated into (raw bytes, its pickle, its tensor data),
reading it fails only with a one-line AdamscopeError, within a time bound. The harness is shared
with the long atheris run (fixtures/fuzz/fuzz_readers.py); this in-suite part stays short."""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fixtures" / "fuzz"))
import harness  # noqa: E402

EDIT = st.tuples(st.integers(0, 4), st.integers(0, 1 << 20), st.integers(0, (1 << 64) - 1))


@settings(
    max_examples=120,
    deadline=None,  # the harness enforces its own per-input timeout
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, len(harness.SEEDS) - 1),
    mode=st.sampled_from(harness.MODES),
    edits=st.lists(EDIT, min_size=1, max_size=4),
)
def test_mutated_fixtures_fail_only_with_adamscope_errors(
    seed: int, mode: str, edits: list[tuple[int, int, int]], tmp_path_factory
) -> None:  # noqa: ANN001
    work = tmp_path_factory.getbasetemp() / "fuzz"
    harness.run_case(seed, mode, edits, work, timeout_s=10)


def test_unmutated_seeds_read_cleanly(tmp_path: Path) -> None:
    """The harness itself works: every seed reads without error when nothing is changed."""
    for seed in range(len(harness.SEEDS)):
        assert harness.run_case(seed, "raw", [], tmp_path / "w") == "ok", harness.SEEDS[seed]


# Inputs atheris found (fixtures/fuzz/fuzz_readers.py), kept as regressions: (seed, mode, edits).
FOUND = [
    (2, "pickle", [(0, 1000748, 10)]),  # LONG_BINPUT 0x0a000304: a 2.7 GB memo table
    (0, "pickle", [(0, 6653, 34)]),  # a param group without 'params': KeyError
    (1, "raw", [(4, 1007986, 3419481623616168688), (2, 100, 0)]),  # is_zipfile raised BadZipFile
    (2, "pickle", [(0, 217963, 32496560639582768)]),  # size and stride of different lengths
    (0, "storage", [(4, 0, 2**64 - 4)]),  # a NaN step: int(nan)
    (4, "pickle", [(0, 123141, 1110)]),  # HF optimizer.pt with a non-integer param id
    (5, "pickle", [(0, 821631, 9910603678816504105)]),  # betas a float, not a pair
]


def test_inputs_found_by_atheris(tmp_path: Path) -> None:
    for seed, mode, edits in FOUND:
        assert harness.run_case(seed, mode, edits, tmp_path / "w") != "ok"
