"""DCP metadata that claims what its files do not hold: properties or chunk sizes of None, a bytes
entry of 3 GB (past its file, and inside a sparse file of GBs), chunks that claim more elements than
their blob, and a million chunks. Each is one line naming the file, in seconds, or (sizes that add
up) a correct analysis. The metadata is spoiled as it is unpickled from a real FSDP2 save."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _hostile_helpers import FIXTURES, bounded, cli, error_lines

from adamscope.readers import dcp

GB = 1 << 30
KEY = "optim.state.embed.weight.exp_avg"


def _fields(rec: Any) -> dict[str, Any]:
    """A record's fields, whichever way its class pickled them (dict, or (dict, slots))."""
    return (
        rec.state[0]
        if isinstance(rec.state, tuple) and isinstance(rec.state[0], dict)
        else (rec.state if isinstance(rec.state, dict) else rec.state[1])
    )


def _storage(md: Any, fqn: str) -> list[dict[str, Any]]:
    return [
        _fields(info) for index, info in md.get("storage_data").items() if index.get("fqn") == fqn
    ]


def _spoil(tmp: Path, monkeypatch: pytest.MonkeyPatch, edit: Callable[[Any, Path], None]) -> Path:
    folder = tmp / "fsdp2"
    shutil.copytree(FIXTURES / "dcp" / "fsdp2", folder)
    real = dcp._entries

    def spoiled(md: Any, where: Path, source: Path) -> Any:
        edit(md, where)
        return real(md, where, source)

    monkeypatch.setattr(dcp, "_entries", spoiled)
    return folder


def _meta(md: Any, key: str = KEY) -> dict[str, Any]:
    return _fields(md.get("state_dict_metadata")[key])


def _no_properties(md: Any, _: Path) -> None:
    _meta(md)["properties"] = None


def _sizes_none(md: Any, _: Path) -> None:
    _fields(_meta(md)["chunks"][0])["sizes"] = None


def _lr_claims_3gb(md: Any, _: Path) -> None:
    _storage(md, "optim.param_groups.0.lr")[0]["length"] = 3 * 10**9


def _lr_claims_3gb_in_sparse_file(md: Any, where: Path) -> None:
    info = _storage(md, "optim.param_groups.0.lr")[0]
    info["length"] = 3 * 10**9
    with open(where / info["relative_path"], "r+b") as f:
        f.truncate(4 * GB)  # a sparse file: the claimed bytes "exist"


def _chunk_claims_more(md: Any, _: Path) -> None:
    for key in (KEY, KEY + "_sq"):
        _claim_more(md, key)


def _claim_more(md: Any, key: str) -> None:
    meta = _meta(md, key)
    first = _fields(meta["chunks"][0])
    first["sizes"] = [40, 6]  # the blob holds 4 x 6
    meta["size"] = [43, 6]
    # the second chunk keeps its offsets (4, 0): a hole would be reported first, so move it
    second = _fields(meta["chunks"][1])
    old = tuple(second["offsets"])
    second["offsets"] = [40, 0]
    for index in list(md.get("storage_data")):
        if index.get("fqn") == key and tuple(_fields(index)["offset"]) == old:
            _fields(index)["offset"] = [40, 0]


CASES = {
    "properties-none": (_no_properties, f"'{KEY}' has no tensor properties (dtype) but NoneType"),
    "chunk-sizes-none": (_sizes_none, "sizes is a NoneType"),
    "bytes-entry-of-3gb": (_lr_claims_3gb, "lies outside the file"),
    "bytes-entry-of-3gb-sparse": (_lr_claims_3gb_in_sparse_file, "3000000000 byte entry"),
    "chunk-claims-more-than-its-blob": (
        _chunk_claims_more,
        "holds 24 elements where the metadata's chunk",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_claims_the_files_do_not_hold(case: str, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    edit, words = CASES[case]
    folder = _spoil(tmp_path, monkeypatch, edit)
    cmds = [["inspect", folder], ["analyze", folder, "-o", tmp_path / "out", "-q"]]
    if case == "chunk-claims-more-than-its-blob":  # inspect reads the metadata, not the blobs
        cmds = cmds[1:]
    for cmd in cmds:
        with bounded(60, megabytes=500):
            rc, err = cli(*cmd)
        assert rc == 2, (cmd[0], err)
        (line,) = error_lines(err)
        assert str(folder) in line and words in line, (cmd[0], line)
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert os.path.getsize(folder / "__0_0.distcp") < GB or case.endswith("sparse")


def test_a_million_chunks_is_seconds_not_minutes(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """One tensor's two chunk records repeated 500,000 times (a metadata of a million chunks, each
    resolving to the same checked file): parsed in seconds (each chunk's path used to be resolved
    on its own: 214 s here), then refused because they cover 500,000 times the tensor."""

    def million(md: Any, _: Path) -> None:
        chunks = _meta(md)["chunks"]
        chunks[:] = chunks * 500_000

    folder = _spoil(tmp_path, monkeypatch, million)
    with bounded(90) as used:
        rc, err = cli("analyze", folder, "-o", tmp_path / "out", "-q")
    assert rc == 2, err
    (line,) = error_lines(err)
    assert "cover 21000000 elements" in line, line
    assert used["seconds"] < 90
