"""Paths read from a checkpoint stay inside it (after symlinks); broken links in a run folder are
named; a symlinked checkpoint folder given by the user is fine."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import adamscope
from adamscope.errors import AdamscopeError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _move_out(p: Path, outside: Path) -> None:
    """Replace `p` by a symlink to a copy of it outside the checkpoint."""
    outside.mkdir(parents=True, exist_ok=True)
    target = outside / p.name
    shutil.move(str(p), str(target))
    p.symlink_to(target)


def test_dcp_file_through_a_symlink_to_outside_is_refused(tmp_path: Path) -> None:
    ck = _copy(FIXTURES / "dcp" / "fsdp2", tmp_path / "ck")
    _move_out(ck / "__1_0.distcp", tmp_path / "elsewhere")
    with pytest.raises(AdamscopeError, match="leads outside the checkpoint folder"):
        adamscope.analyze(ck)


@pytest.mark.parametrize("entry", ["latest", "global_step5"])
def test_deepspeed_latest_through_a_symlink_is_not_followed(
    tmp_path: Path, entry: str, caplog
) -> None:
    """`latest` (or the tag folder it names) a symlink to outside: the pointer is refused with
    the reason; the run folder's own step entries are then analysed, as for any broken latest
    (a directory entry is the user's layout, not a path read from a file)."""
    ck = _copy(FIXTURES / "deepspeed" / "zero2_w2_fp32", tmp_path / "ck")
    _move_out(ck / entry, tmp_path / "elsewhere")
    t = adamscope.analyze(ck)
    assert t.tensors.height > 0
    assert any("leads outside the checkpoint folder" in r.getMessage() for r in caplog.records)


def test_universal_parameter_folder_symlink_to_outside_is_refused(tmp_path: Path) -> None:
    ck = _copy(FIXTURES / "deepspeed" / "universal_zero2", tmp_path / "ck")
    _move_out(ck / "global_step5" / "zero" / "fc1.weight", tmp_path / "elsewhere")
    with pytest.raises(AdamscopeError, match="leads outside"):
        adamscope.analyze(ck)


def test_symlinked_checkpoint_folder_given_by_the_user_is_fine(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(FIXTURES / "dcp" / "fsdp2")
    assert adamscope.analyze(link).tensors.height > 0


def test_links_inside_the_checkpoint_that_stay_inside_are_fine(tmp_path: Path) -> None:
    ck = _copy(FIXTURES / "dcp" / "fsdp2", tmp_path / "ck")
    (ck / "data").mkdir()
    shutil.move(str(ck / "__0_0.distcp"), str(ck / "data" / "__0_0.distcp"))
    (ck / "__0_0.distcp").symlink_to(Path("data") / "__0_0.distcp")
    assert adamscope.analyze(ck).tensors.height > 0


def _run_with_a_broken_link(tmp_path: Path, target: str) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint-5").symlink_to(FIXTURES / "hf_trainer" / "gpt2" / "checkpoint-10")
    (run / "checkpoint-9").symlink_to(tmp_path / target)
    return run


@pytest.mark.parametrize("kind", ["broken", "loop"])
def test_a_broken_link_in_a_run_folder_is_named(tmp_path: Path, kind: str, caplog) -> None:
    run = _run_with_a_broken_link(tmp_path, "gone")
    if kind == "loop":
        (run / "checkpoint-9").unlink()
        os.symlink(run / "checkpoint-9", run / "checkpoint-9")
    with pytest.raises(AdamscopeError, match="checkpoint-9: a (broken symlink|symlink loop)"):
        adamscope.analyze(run)
    t = adamscope.analyze(run, keep_going=True)
    assert [p.name for p, _ in t.failures] == ["checkpoint-9"]
    assert t.tensors.height > 0
    # a link without a step in its name is only named
    (run / "notes").symlink_to(tmp_path / "nothing-here")
    caplog.clear()
    adamscope.analyze(run, keep_going=True)
    assert any(
        "notes" in r.getMessage() and "broken symlink" in r.getMessage() for r in caplog.records
    )
