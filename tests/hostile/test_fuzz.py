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
    # found by fixtures/fuzz/campaign.py (structure-aware modes): library errors let through
    (8, "raw", [(1, 548702, 6168478149656942844)]),  # safe_open: header not fully covered
    (7, "raw", [(1, 754460, 12759478878367637175)]),  # a DCP blob that is not a zip
    (7, "raw", [(0, 673984, 10788274384565975920), (0, 754081, 9342246812058298066)]),  # name bytes
    (7, "zipdir", [(4, 139858, 12619707825609156576)]),  # a bad CRC-32 in a DCP blob
    (7, "raw", [(0, 623696, 6676967310464493007)]),  # zipfile: "zip file version 20.7"
    # a DeepSpeed param_slice_mappings entry that is a class, not a dict
    (5, "opcodes", [(1, 900618, 16056021853471619221), (2, 1012313, 13002976610629114739)]),
    # campaign --seed 6 (fifth session): a DCP blob whose data.pkl names a storage it lacks
    (
        7,
        "raw",
        [
            (0, 704741, 7090365701366204506),
            (1, 693818, 7164318962215571364),
            (4, 832176, 1577272603698312694),
            (2, 1000684, 5023210276830972926),
        ],
    ),
    # review_ok --seed 5 (fifth session): a BYTEARRAY8 length of 2**55 in a DeepSpeed rank file
    (5, "pickle", [(4, 179718, 15322712392434452886), (1, 405067, 16297236936337924882)]),
]


def test_inputs_found_by_atheris(tmp_path: Path) -> None:
    for seed, mode, edits in FOUND:
        assert harness.run_case(seed, mode, edits, tmp_path / "w") != "ok"


def test_error_messages_are_one_line() -> None:
    """A library error quoted into a message (an UnpicklingError's text spans lines) stays one."""
    from adamscope.errors import CorruptCheckpointError

    e = CorruptCheckpointError(
        "f.distcp: cannot unpickle (UnpicklingError: A load\n  persistent id)"
    )
    assert "\n" not in str(e) and "A load persistent id" in str(e)
