"""The restricted unpickler: malicious pickles are refused before anything runs; known framework
objects load as inert stubs; legacy and corrupt files fail clearly.

Malicious files are written with the real writer (torch.save pickles the payload object) or, for a
module that does not exist, as a hand-built torch zip whose data.pkl names it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from adamscope.errors import CorruptCheckpointError, UnsafePickleError, UnsupportedFormatError
from adamscope.readers.torchzip import LazyTensor, load_lazy, peek
from adamscope.readers.unpickler import Stub


class _SystemPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - the attack
        return (os.system, (f"touch {self.marker}",))


class _EvalPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - the attack
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


class _GetattrPayload:
    def __reduce__(self):  # noqa: ANN204 - getattr is the usual first step of an exploit chain
        return (getattr, ("text", "upper"))


def _save(obj: object, path: Path) -> Path:
    torch.save({"weights": torch.ones(3), "payload": obj}, path)
    return path


def test_os_system_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _save(_SystemPayload(marker), tmp_path / "evil.pt")
    with pytest.raises(UnsafePickleError) as err:
        load_lazy(path)
    message = str(err.value)
    assert str(path) in message and "posix.system" in message
    assert not marker.exists()


def test_eval_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _save(_EvalPayload(marker), tmp_path / "evil.pt")
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        load_lazy(path)
    assert not marker.exists()


def test_getattr_is_not_on_the_allowlist(tmp_path: Path) -> None:
    path = _save(_GetattrPayload(), tmp_path / "evil.pt")
    with pytest.raises(UnsafePickleError, match=r"builtins\.getattr"):
        load_lazy(path)


def _handmade_torch_zip(path: Path, pkl: bytes) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("evil/data.pkl", pkl)
        zf.writestr("evil/byteorder", "little")
        zf.writestr("evil/version", "3\n")
    return path


def test_unknown_module_is_never_imported(tmp_path: Path) -> None:
    # PROTO 2, GLOBAL 'adamscope_evil_pkg.payload Thing', EMPTY_TUPLE, REDUCE, STOP
    pkl = b"\x80\x02cadamscope_evil_pkg.payload\nThing\n)R."
    path = _handmade_torch_zip(tmp_path / "evil.pt", pkl)
    with pytest.raises(UnsafePickleError, match=r"adamscope_evil_pkg\.payload\.Thing"):
        load_lazy(path)
    assert "adamscope_evil_pkg" not in sys.modules
    # peeking (format detection) stubs it instead, still without importing anything
    obj = peek(path)
    assert isinstance(obj, Stub) and obj.qualname == "adamscope_evil_pkg.payload.Thing"
    assert "adamscope_evil_pkg" not in sys.modules


def test_trust_pickle_falls_back_to_torch_load_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "dated.pt"
    torch.save({"when": datetime.date(2024, 1, 2), "w": torch.arange(6.0).reshape(2, 3)}, path)
    with pytest.raises(UnsafePickleError, match=r"datetime\.date"):
        load_lazy(path)
    with pytest.warns(UserWarning, match="weights_only=False"):
        obj = load_lazy(path, trust_pickle=True)
    assert obj["when"] == datetime.date(2024, 1, 2)
    assert obj["w"].shape == (2, 3)
    assert torch.equal(obj["w"].read(2, 5), torch.tensor([2.0, 3.0, 4.0]))


def test_known_framework_objects_load_as_inert_stubs(tmp_path: Path) -> None:
    from lightning.fabric.utilities.data import AttributeDict

    path = tmp_path / "objects.pt"
    torch.save(
        {
            "args": argparse.Namespace(lr=0.1, name="run"),
            "hparams": AttributeDict(hidden=8),
            "dir": pathlib.Path("/data/run1"),
            "bytes": b"\x00\xffab",
            "misc": {1, 2},
            "c": complex(1, 2),
            "w": torch.nn.Parameter(torch.ones(2, 2)),
        },
        path,
    )
    obj = load_lazy(path)
    assert isinstance(obj["args"], Stub) and obj["args"].attrs() == {"lr": 0.1, "name": "run"}
    assert isinstance(obj["hparams"], Stub) and dict(obj["hparams"]) == {"hidden": 8}
    assert obj["dir"] == pathlib.PurePosixPath("/data/run1")
    assert obj["bytes"] == b"\x00\xffab" and obj["misc"] == {1, 2} and obj["c"] == 1 + 2j
    assert isinstance(obj["w"], LazyTensor) and obj["w"].shape == (2, 2)


def test_legacy_format_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsupportedFormatError, match="legacy"):
        load_lazy(path)


def test_truncated_file_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "full.pt"
    torch.save({"w": torch.randn(1000)}, path)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises((CorruptCheckpointError, UnsupportedFormatError)) as err:
        load_lazy(cut)
    assert str(cut) in str(err.value)


def test_storage_shorter_than_tensor_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "ok.pt"
    torch.save({"w": torch.randn(64)}, path)
    # rewrite the zip with the storage entry cut to half its bytes (the archive stays valid)
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data[: len(data) // 2] if "/data/" in info.filename else data)
    t = load_lazy(bad)["w"]
    with pytest.raises(CorruptCheckpointError, match="shorter than its tensor"):
        t.read(0, 64)


def test_not_a_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(UnsupportedFormatError, match="not a torch.save zip"):
        load_lazy(path)


def test_pickle_cannot_overwrite_a_lazy_tensor_attribute(tmp_path: Path) -> None:
    # a valid tensor followed by BUILD {'dtype_name': 'load'}: an attempt to point the dtype lookup
    # at torch.load. The hand-written data.pkl reuses torch's own storage record.
    path = tmp_path / "ok.pt"
    torch.save(torch.ones(2), path)
    with zipfile.ZipFile(path) as zf:
        prefix = next(n for n in zf.namelist() if n.endswith("data.pkl"))[: -len("data.pkl")]
        pkl = zf.read(prefix + "data.pkl")
        storage = zf.read(prefix + "data/0")
    assert pkl.endswith(b".")  # ... REDUCE (the tensor), BINPUT, STOP
    # EMPTY_DICT, BINUNICODE 'dtype_name', BINUNICODE 'load', SETITEM, BUILD, STOP
    tampered = pkl[:-1] + b"}X\x0a\x00\x00\x00dtype_nameX\x04\x00\x00\x00loadsb."
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr(prefix + "data.pkl", tampered)
        zf.writestr(prefix + "data/0", storage)
    with pytest.raises(CorruptCheckpointError, match="may not set state"):
        load_lazy(bad)
