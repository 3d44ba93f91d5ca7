"""Pickles and zip members that expand: a "billion laughs" DAG of shared references (in betas, param
names, persistent-id keys, dict keys, set members), a tower of nested slices, a deflate bomb or a
bzip2 member as data.pkl, and a central-directory entry pointing at another member's bytes. Each is
refused before it is unpickled or inflated (unpickler.check_pickle, torchzip.read_member and
member_data_start): one line naming the file, in seconds, without the gigabytes."""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from _hostile_helpers import TORCH_FILES, bounded, cli, error_lines, rezip

from adamscope.errors import CorruptCheckpointError
from adamscope.readers.guard import PICKLE_BYTES
from adamscope.readers.unpickler import check_pickle

FIXTURE = TORCH_FILES["torch"]


def _laughs(depth: int = 40) -> list:
    x: list = []
    for _ in range(depth):
        x = [x, x]  # 2^40 leaves when walked, 40 objects in the pickle
    return x


def _tuple_laughs(depth: int = 64) -> tuple:
    x: tuple = ()
    for _ in range(depth):
        x = (x, x)  # hashing it (as a dict key or set member) takes 2^64 steps
    return x


def _body(obj: object) -> bytes:
    """The opcodes of obj's protocol-2 pickle without PROTO and STOP (to splice into another)."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def _as_dict_key() -> bytes:
    t = _body(_tuple_laughs())
    return b"\x80\x02}" + t + b"K\x01s."  # {t: 1}, built without hashing t here


def _as_set_member() -> bytes:
    t = pickle.dumps(_tuple_laughs(), protocol=4)[2:-1]
    return b"\x80\x04\x8f(" + t + b"\x90."  # EMPTY_SET, MARK, t, ADDITEMS


def _as_persistent_id_key() -> bytes:
    pid = _body(("storage", _laughs(), _laughs(), "cpu", 4))
    return b"\x80\x02" + pid + b"Q."  # BINPERSID


def _nested_slices(n: int = 100_000) -> bytes:
    """slice(slice(...slice(None)...)): the interpreter crashes freeing a deep enough tower."""
    return (
        b"\x80\x02c__builtin__\nslice\nq\x00"
        + b"h\x00" * (n - 1)
        + b"N"
        + b"\x85R" * n  # TUPLE1 REDUCE
        + b"."
    )


def _saved_with(tmp: Path, edit: str) -> Path:
    """The torch fixture re-saved by torch.save with a DAG placed in its tree."""
    sd = torch.load(FIXTURE, weights_only=True)
    group = sd["param_groups"][0]
    if edit == "betas":
        group["betas"] = _laughs()
    else:  # param names
        group["param_names"] = [_laughs() for _ in group["params"]]
    path = tmp / "opt.pt"
    torch.save(sd, path)
    return path


RAW = {
    "dict_key": _as_dict_key,
    "set_member": _as_set_member,
    "persistent_id_key": _as_persistent_id_key,
    "nested_slices": _nested_slices,
}


@pytest.mark.parametrize("case", ["betas", "param_names", *sorted(RAW)])
def test_shared_reference_bombs_are_refused_before_unpickling(case: str, tmp_path: Path) -> None:
    if case in RAW:
        path = rezip(FIXTURE, tmp_path / "opt.pt", replace={"data.pkl": RAW[case]()})
    else:
        path = _saved_with(tmp_path, case)
    assert path.stat().st_size < 1 << 20
    with bounded(20, megabytes=100):
        rc, err = cli("analyze", path, "-o", tmp_path / "out", "-q")
    assert rc == 2, err
    (line,) = error_lines(err)
    assert str(path) in line and ("shared references" in line or "nests deeper" in line), line


def test_real_pickles_pass_the_scan() -> None:
    """Every fixture's data.pkl (all families) and DCP .metadata pass check_pickle."""
    fixtures = Path(FIXTURE).parents[1]
    n = 0
    for f in [*fixtures.rglob("*.pt"), *fixtures.rglob("*.ckpt"), *fixtures.rglob("*.distcp")]:
        if zipfile.is_zipfile(f):
            with zipfile.ZipFile(f) as zf:
                for name in zf.namelist():
                    if name.endswith("data.pkl"):
                        check_pickle(zf.read(name), source=f)
                        n += 1
    for f in fixtures.rglob(".metadata"):
        check_pickle(f.read_bytes(), source=f)
        n += 1
    assert n > 100


def test_deflate_bomb_as_data_pkl(tmp_path: Path) -> None:
    """A data.pkl that inflates past PICKLE_BYTES: refused from its declared size, uninflated."""
    path = tmp_path / "bomb.pt"
    # deflated zeros written in blocks: the bomb never sits in memory, here or there
    with zipfile.ZipFile(FIXTURE) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            if info.filename.endswith("data.pkl"):
                target = zipfile.ZipInfo(info.filename)
                target.compress_type = zipfile.ZIP_DEFLATED
                with zout.open(target, "w", force_zip64=True) as f:
                    block = bytes(16 << 20)
                    for _ in range(PICKLE_BYTES // len(block) + 1):
                        f.write(block)
            else:
                zout.writestr(info.filename, zin.read(info.filename))
    assert path.stat().st_size < 2 << 20
    with bounded(20, megabytes=100):
        rc, err = cli("analyze", path, "-o", tmp_path / "out", "-q")
    assert rc == 2, err
    (line,) = error_lines(err)
    assert "inflates to more than" in line, line


def test_bzip2_data_pkl_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bz.pt"
    with zipfile.ZipFile(FIXTURE) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            kind = zipfile.ZIP_BZIP2 if info.filename.endswith("data.pkl") else zipfile.ZIP_STORED
            zout.writestr(info.filename, zin.read(info.filename), compress_type=kind)
    with bounded(20):
        rc, err = cli("analyze", path, "-o", tmp_path / "out", "-q")
    assert rc == 2 and "compressed with method 12" in error_lines(err)[0], err


def test_central_directory_pointing_at_another_member(tmp_path: Path) -> None:
    """data/1 (an exp_avg) re-pointed at data/2's local header (its exp_avg_sq, same size): read
    without the name check, the exp_avg values would be the exp_avg_sq's, exit 0."""
    data = bytearray(FIXTURE.read_bytes())
    with zipfile.ZipFile(FIXTURE) as zf:
        infos = {
            i.filename.rsplit("/", 2)[-2] + "/" + i.filename.rsplit("/", 1)[-1]: i
            for i in zf.infolist()
        }
    a, b = infos["data/1"], infos["data/2"]
    assert a.file_size == b.file_size
    name = a.filename.encode()
    pos = 0
    while True:  # the central-directory record of data/1
        pos = data.index(b"PK\x01\x02", pos + 1)
        n = struct.unpack_from("<H", data, pos + 28)[0]
        if bytes(data[pos + 46 : pos + 46 + n]) == name:
            break
    struct.pack_into("<I", data, pos + 42, b.header_offset)
    path = tmp_path / "opt.pt"
    path.write_bytes(bytes(data))
    with bounded(20):
        rc, err = cli("analyze", path, "-o", tmp_path / "out", "-q")
    assert rc == 2, err
    (line,) = error_lines(err)
    assert "local header names another file" in line, line


def test_check_pickle_names_the_source() -> None:
    with pytest.raises(CorruptCheckpointError, match="^here: expands"):
        check_pickle(pickle.dumps(_laughs(), protocol=2), source="here")


@pytest.mark.parametrize("opcode", [b"\x96", b"\x8e", b"\x8d"])  # BYTEARRAY8 BINBYTES8 BINUNICODE8
def test_a_length_past_the_pickle_is_refused_before_unpickling(
    opcode: bytes, tmp_path: Path
) -> None:
    """A protocol-5 length of 2**55 bytes in a data.pkl of a few bytes (found by the fuzz campaign
    in a DeepSpeed rank file): the C unpickler would try to allocate it (a MemoryError, and
    CPython printed a stray 'SystemError: deallocated bytearray' line to stderr)."""
    pkl = b"\x80\x05" + opcode + struct.pack("<Q", 1 << 55) + b"abc."
    path = rezip(FIXTURE, tmp_path / "opt.pt", replace={"data.pkl": pkl})
    with bounded(20, megabytes=100):
        rc, err = cli("analyze", path, "-o", tmp_path / "out", "-q")
    assert rc == 2, err
    assert "SystemError" not in err, err
    (line,) = error_lines(err)
    assert str(path) in line and "an opcode claims more bytes than it holds" in line, line
