"""The numba pickle scan (readers/_pickle_scan.py) gives the Python reference's verdict, refused or
not and with which line, on every real pickle in fixtures/, on the bombs of
tests/hostile/test_pickle_bombs.py and on seeded opcode and byte mutations of both."""

from __future__ import annotations

import pickle
import random
import struct
import sys
import time
import zipfile
from pathlib import Path

import pytest

from adamscope.errors import CorruptCheckpointError
from adamscope.readers import _pickle_scan, guard, unpickler

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "fixtures" / "fuzz"))
sys.path.insert(0, str(ROOT / "tests" / "hostile"))
import harness  # noqa: E402
from test_pickle_bombs import (  # noqa: E402
    _as_dict_key,
    _as_persistent_id_key,
    _as_set_member,
    _laughs,
    _nested_slices,
    _tuple_laughs,
)

pytestmark = pytest.mark.skipif(not _pickle_scan.available(), reason="numba kernel unavailable")
REFERENCE = "left to the reference"


def _reference(data: bytes) -> str | None:
    try:
        unpickler.check_pickle_reference(data, source="s")
    except CorruptCheckpointError as e:
        return str(e)
    return None


def _kernel(data: bytes) -> str | None:
    limit = unpickler.EXPANSION_PER_BYTE * len(data) + unpickler.EXPANSION_SLACK
    try:
        decided = _pickle_scan.check(data, source="s", limit=limit, max_depth=unpickler.MAX_DEPTH)
    except CorruptCheckpointError as e:
        return str(e)
    return None if decided else REFERENCE


def _real_pickles() -> list[tuple[str, bytes]]:
    found = []
    fixtures = ROOT / "fixtures"
    for f in sorted(
        [*fixtures.rglob("*.pt"), *fixtures.rglob("*.ckpt"), *fixtures.rglob("*.distcp")]
    ):
        if zipfile.is_zipfile(f):
            with zipfile.ZipFile(f) as zf:
                found += [(f"{f}:{n}", zf.read(n)) for n in zf.namelist() if n.endswith("data.pkl")]
    found += [(str(f), f.read_bytes()) for f in sorted(fixtures.rglob(".metadata"))]
    return found


def _bombs() -> dict[str, bytes]:
    return {
        "laughs": pickle.dumps(_laughs(), protocol=2),
        "laughs p5": pickle.dumps(_laughs(), protocol=5),
        "tuple laughs": pickle.dumps(_tuple_laughs(), protocol=4),
        "dict key": _as_dict_key(),
        "set member": _as_set_member(),
        "persistent id": _as_persistent_id_key(),
        "nested slices": _nested_slices(2_000),
        "memo past": b"\x80\x02]r\xff\xff\x00\x00.",
        "memo unwritten": b"\x80\x02]q\x00h\x01.",
        "binget before put": b"\x80\x04h\x00.",
        **{
            f"length past {op!r}": b"\x80\x05" + op + struct.pack("<Q", 1 << 55) + b"abc."
            for op in (b"\x96", b"\x8e", b"\x8d")
        },
        "short binunicode past": b"\x80\x04\x8c\x09abc.",
        "bad utf8": b"\x80\x04\x8c\x02\xc3\x28.",
        "surrogate": b"\x80\x04\x8c\x03\xed\xa0\x80.",
        "negative binstring": b"\x80\x02T\xff\xff\xff\xffabc.",
        "global without newline": b"\x80\x02cbuiltins\nlist",
        "global non-ascii": b"\x80\x02cbuilt\xc3\xa9ins\nlist\n)R.",
        "self append": b"\x80\x02]q\x00h\x00a" + b"h\x00h\x00a" * 40 + b".",
        # past the kernel's first 1,024 stack slots, cells and memo entries (it grows them)
        "wide tuple": b"\x80\x04(" + b"K\x01" * 5000 + b"t.",
        "laughs after 3000 memos": b"\x80\x04("
        + b"K\x01\x94" * 3000
        + b"0" * 3001
        + pickle.dumps(_laughs(), protocol=2)[2:],
        "protocol 0": pickle.dumps({"a": [1, 2.5, "x" * 40, b"y"]}, protocol=0),
        "protocol 1": pickle.dumps({"a": [1, 2.5, "x" * 40, b"y"]}, protocol=1),
    }


def test_real_pickles_get_the_reference_verdict_from_the_kernel() -> None:
    pickles = _real_pickles()
    assert len(pickles) > 100
    for name, data in pickles:
        assert _kernel(data) is None, name  # decided by the kernel, and passed
        assert _reference(data) is None, name


@pytest.mark.parametrize("case", sorted(_bombs()))
def test_bombs_get_the_reference_verdict(case: str) -> None:
    data = _bombs()[case]
    kernel = _kernel(data)
    if case.startswith("protocol 0"):
        assert kernel == REFERENCE  # text opcodes: the reference decides
    else:
        assert kernel != REFERENCE, case
        assert kernel == _reference(data), case


def _mutants(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    small = [d for _, d in _real_pickles() if len(d) < 20_000]
    pool = small[:: max(1, len(small) // 30)] + list(_bombs().values())
    out = []
    for _ in range(n):
        data = rng.choice(pool)
        edits = [
            (rng.randrange(5), rng.randrange(1 << 20), rng.randrange(1 << 64))
            for _ in range(rng.randint(1, 3))
        ]
        out.append(
            harness._opcodes(data, edits) if rng.random() < 0.6 else harness._edit(data, edits)
        )
    return out


def test_mutated_pickles_get_the_reference_verdict() -> None:
    decided = refused = 0
    for i, data in enumerate(_mutants(600, seed=20)):
        kernel = _kernel(data)
        if kernel == REFERENCE:
            continue
        decided += 1
        refused += kernel is not None
        assert kernel == _reference(data), (i, data[:200])
    assert decided > 400 and refused > 20, (decided, refused)  # the sweep reaches both verdicts


def test_utf8_validation_matches_python() -> None:
    import numpy as np

    from adamscope.readers._pickle_scan_kernel import utf8_chars

    rng = random.Random(3)
    alphabet = [
        0x41,
        0x80,
        0xBF,
        0xC2,
        0xDF,
        0xE0,
        0xA0,
        0xED,
        0x9F,
        0xEF,
        0xF0,
        0x90,
        0xF4,
        0x8F,
        0xFF,
    ]
    for _ in range(3000):
        raw = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        arr = np.frombuffer(raw, np.uint8)
        for surrogates, errors in ((True, "surrogatepass"), (False, "strict")):
            try:
                want = len(raw.decode("utf-8", errors))
            except UnicodeDecodeError:
                want = -1
            assert utf8_chars(arr, 0, len(raw), surrogates) == want, (raw, errors)


def test_check_pickle_uses_the_kernel_from_its_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = pickle.dumps(_laughs(), protocol=4)
    monkeypatch.setattr(unpickler, "KERNEL_MIN_BYTES", 1)
    calls = []
    monkeypatch.setattr(_pickle_scan, "scan", lambda d, **k: calls.append(1) or (0, 0, 0))
    unpickler.check_pickle(bomb, source="s")  # the (stubbed) kernel said OK: no reference
    assert calls == [1]


def test_a_pickle_past_the_reference_limit_needs_the_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above guard.PICKLE_BYTES (a DCP .metadata may be larger) the pure-Python scan is not run."""
    text = pickle.dumps(list(range(5000)), protocol=0)  # text opcodes: the kernel is unsure
    binary = pickle.dumps(list(range(5000)), protocol=4)
    monkeypatch.setattr(unpickler, "KERNEL_MIN_BYTES", 1)
    monkeypatch.setattr(guard, "PICKLE_BYTES", 1000)
    unpickler.check_pickle(binary, source="s")
    with pytest.raises(CorruptCheckpointError, match="^s: a pickle of .* only the pure-Python"):
        unpickler.check_pickle(text, source="s")


def test_speed(capsys: pytest.CaptureFixture[str]) -> None:
    """Printed, not asserted: both scans on a 2 MB protocol-4 pickle of dicts."""
    data = pickle.dumps([{f"k{i}": (i, float(i), "v" * (i % 50))} for i in range(40_000)], 4)
    t0 = time.perf_counter()
    assert _reference(data) is None
    t1 = time.perf_counter()
    assert _kernel(data) is None
    t2 = time.perf_counter()
    mb = len(data) / 1e6
    with capsys.disabled():
        print(
            f"\npickle scan of {mb:.1f} MB: reference {mb / (t1 - t0):.1f} MB/s, "
            f"kernel {mb / (t2 - t1):.1f} MB/s ({(t1 - t0) / (t2 - t1):.0f}x)"
        )


def test_without_the_kernel_the_reference_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = pickle.dumps(_laughs(), protocol=4)
    monkeypatch.setattr(unpickler, "KERNEL_MIN_BYTES", 1)
    monkeypatch.setattr(_pickle_scan, "available", lambda: False)
    monkeypatch.setattr(_pickle_scan, "scan", None)  # never called
    with pytest.raises(CorruptCheckpointError) as e:
        unpickler.check_pickle(bomb, source="s")
    assert str(e.value) == _reference(bomb)


def test_a_dcp_metadata_has_its_own_cap(tmp_path: Path) -> None:
    """guard.DCP_METADATA_BYTES, not PICKLE_BYTES, bounds `.metadata` (sparse files: no bytes)."""
    from adamscope.readers.dcp import read_metadata

    assert guard.DCP_METADATA_BYTES > guard.PICKLE_BYTES
    with open(tmp_path / ".metadata", "wb") as f:
        f.truncate(guard.DCP_METADATA_BYTES + 1)
    with pytest.raises(
        CorruptCheckpointError,
        match=f"more than a DCP .metadata may hold \\({guard.DCP_METADATA_BYTES} bytes",
    ):
        read_metadata(tmp_path)


def test_a_mark_used_as_a_container_leaves_the_scan_unchanged() -> None:
    """APPEND onto a MARK (b'(K\\x01a'): the reference grew its module-level marker in place, so one
    pickle changed how every later one was scanned. Now the stream is inconsistent and the
    simulation stops; the marker and the next verdicts are untouched."""
    from adamscope.readers import unpickler

    before = list(unpickler._MARK)
    unpickler.check_pickle_reference(b"\x80\x02(K\x01a.", source="x")
    assert unpickler._MARK == before == [-1, -1]
