"""Issue 21, "fix first": nothing a checkpoint ships may run code or redirect our writes and
deletes. Symlinked OUT or OUT/.parts, -o inside the input, and transformers' remote-code prompt."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adamscope.errors import AdamscopeError
from adamscope.pipeline.run import _remove_temps, check_output

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
NANO = FIXTURES / "nanogpt" / "compiled"


def _cli(*args: object, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "adamscope", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def _victim(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("secret")
    (home / ".bashrc").write_text("rc")
    return home


def test_shipped_parts_symlink_is_refused_and_nothing_deleted(tmp_path: Path) -> None:
    home = _victim(tmp_path)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(NANO, ckpt)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".parts").symlink_to(home)
    r = _cli("analyze", ckpt, "-o", out, "--resume", "-q")
    assert r.returncode == 2, r.stderr
    assert "symlink" in r.stderr and "Traceback" not in r.stderr
    assert (home / ".ssh" / "id_rsa").read_text() == "secret" and (home / ".bashrc").exists()


def test_symlinked_out_is_refused(tmp_path: Path) -> None:
    home = _victim(tmp_path)
    (tmp_path / "out").symlink_to(home)
    with pytest.raises(AdamscopeError, match="symlink"):
        check_output(tmp_path / "out", inputs=NANO)
    assert sorted(p.name for p in home.iterdir()) == [".bashrc", ".ssh"]


def test_output_inside_the_input_or_a_file_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(NANO, ckpt)
    before = sorted(p.name for p in ckpt.rglob("*"))
    r = _cli("analyze", ".", "-q", cwd=ckpt)  # default -o adamscope-out: inside the input
    assert r.returncode == 2 and "inside the input" in r.stderr, r.stderr
    assert sorted(p.name for p in ckpt.rglob("*")) == before
    f = tmp_path / "file"
    f.write_text("x")
    r = _cli("analyze", ckpt, "-o", f, "-q")
    assert r.returncode == 2 and "not a folder" in r.stderr and f.read_text() == "x"


def test_only_our_temp_names_are_cleaned(tmp_path: Path) -> None:
    parts = tmp_path / ".parts"
    parts.mkdir()
    ours_dir = parts / ".0123456789abcdef0123.k2j_9x1q"
    ours_dir.mkdir()
    ours_file = parts / ".tensors.parquet.ab12cd34.tmp"
    ours_file.write_text("")
    keep = [parts / ".ssh", parts / ".bashrc", parts / "0123456789abcdef0123"]
    keep[0].mkdir()
    keep[1].write_text("rc")
    keep[2].mkdir()
    _remove_temps(parts)
    assert not ours_dir.exists() and not ours_file.exists()
    assert all(p.exists() for p in keep)


def test_remote_code_prompt_never_runs_the_checkpoint_code(tmp_path: Path) -> None:
    """An HF checkpoint whose config.json has auto_map and an unknown model_type, shipped with a
    configuration_*.py: with `y` on stdin transformers must still not import it."""
    pytest.importorskip("transformers")
    ckpt = tmp_path / "checkpoint-10"
    shutil.copytree(FIXTURES / "hf_trainer" / "llama" / "checkpoint-10", ckpt)
    marker = tmp_path / "PWNED"
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(
        model_type="adamscope_evil", auto_map={"AutoConfig": "configuration_evil.EvilConfig"}
    )
    (ckpt / "config.json").write_text(json.dumps(cfg))
    (ckpt / "configuration_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'adamscope_evil'\n"
    )
    # inspect reads names on the main thread, where transformers' prompt reads stdin (without
    # trust_remote_code=False it ran the file here); analyze reads on a worker thread
    for args in (("inspect", ckpt), ("analyze", ckpt, "-o", tmp_path / "out", "-q")):
        r = _cli(*args, stdin="y\ny\ny\n")
        assert not marker.exists(), f"the checkpoint's code ran ({args[0]})"
        assert r.returncode in (0, 2) and "Traceback" not in r.stderr, r.stderr
        assert "[y/N]" not in r.stdout + r.stderr  # never prompted
