"""Runs over many checkpoints: --keep-going lists failures and exits 1; outputs appear whole even
when the process is SIGKILLed mid-run; --resume completes an interrupted output to exactly what an
uninterrupted run writes, re-analysing only what is missing or changed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch
from _hostile_helpers import LIGHTNING, ROOT, cli

from adamscope.api import AnalyzeOptions, analyze
from adamscope.config import StatsConfig

TABLES = ("tensors", "layers", "histograms")


def _run_folder(root: Path, n: int, *, link: bool = True) -> Path:
    """n Lightning checkpoints under step names (hard links to, or copies of, the 3 fixtures)."""
    root.mkdir(parents=True)
    for k in range(1, n + 1):
        src, dst = LIGHTNING[k % len(LIGHTNING)], root / f"epoch=0-step={k}.ckpt"
        os.link(src, dst) if link else shutil.copyfile(src, dst)
    return root


def _tables(out: Path) -> dict[str, pl.DataFrame]:
    return {t: pl.read_parquet(out / f"{t}.parquet") for t in TABLES}


def _assert_same(a: Path, b: Path) -> None:
    for t, df in _tables(a).items():
        assert df.equals(_tables(b)[t]), t


def _opts(out: Path, **kw: object) -> AnalyzeOptions:
    return AnalyzeOptions(out=out, stats=StatsConfig(device="cpu", dip_sample=2048), **kw)


def test_keep_going_lists_failures_and_exits_1(tmp_path: Path) -> None:
    run = _run_folder(tmp_path / "run", 4)
    cut = run / "epoch=0-step=2.ckpt"
    cut.unlink()
    cut.write_bytes(LIGHTNING[0].read_bytes()[:5000])
    sgd = run / "epoch=0-step=3.ckpt"
    sgd.unlink()
    tree = torch.load(LIGHTNING[0], weights_only=True)
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    w.sum().backward()
    opt.step()
    tree["optimizer_states"] = [opt.state_dict()]
    torch.save(tree, sgd)

    code, err = cli("analyze", run, "-o", tmp_path / "stop", "-q")
    assert code == 2 and str(cut) in err  # without --keep-going: the first failure stops the run
    assert not (tmp_path / "stop" / "tensors.parquet").exists()

    code, err = cli("analyze", run, "-o", tmp_path / "out", "-q", "--keep-going")
    assert code == 1
    failed = [line for line in err.splitlines() if line.startswith("adamscope: failed:")]
    assert len(failed) == 2
    assert str(cut) in failed[0] and "truncated" in failed[0]
    assert str(sgd) in failed[1] and "not Adam/AdamW: SGD" in failed[1]
    t = pl.read_parquet(tmp_path / "out" / "tensors.parquet")
    assert sorted(set(t["checkpoint"])) == ["epoch=0-step=1.ckpt", "epoch=0-step=4.ckpt"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [f["path"] for f in manifest["failures"]] == [str(cut), str(sgd)]


def test_keep_going_when_every_checkpoint_fails(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for k in (1, 2):
        (run / f"step_{k}.pt").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    code, err = cli("analyze", run, "-o", tmp_path / "out", "-q", "--keep-going")
    assert code == 2 and "no checkpoint could be analysed (2 failed)" in err


def test_resume_skips_done_and_reanalyses_changed(tmp_path: Path) -> None:
    run = _run_folder(tmp_path / "run", 5, link=False)  # own mtimes
    full = analyze(run, options=_opts(tmp_path / "full"))
    assert len(full.checkpoints) == 5

    partial_run = tmp_path / "partial"
    partial_run.mkdir()
    for p in sorted(run.iterdir())[:3]:
        os.link(p, partial_run / p.name)
    out = tmp_path / "out"
    analyze(partial_run, options=_opts(out))
    for p in sorted(run.iterdir())[3:]:
        os.link(p, partial_run / p.name)
    again = analyze(partial_run, options=_opts(out, resume=True))
    assert [p.name for p in again.skipped] == [p.name for p in sorted(run.iterdir())[:3]]
    t_full = _tables(tmp_path / "full")["tensors"].drop("checkpoint")
    assert t_full.equals(_tables(out)["tensors"].drop("checkpoint"))

    changed = partial_run / "epoch=0-step=2.ckpt"
    os.utime(changed, ns=(time.time_ns(), time.time_ns()))
    third = analyze(partial_run, options=_opts(out, resume=True))
    assert changed not in third.skipped and len(third.skipped) == 4
    fresh = analyze(partial_run, options=_opts(out))  # without --resume: everything again
    assert fresh.skipped == []


def _parquet_ok(p: Path) -> bool:
    try:
        pl.read_parquet(p)
    except Exception:  # noqa: BLE001 - any failure to read means a half-written file
        return False
    return True


def _check_no_partial_output(out: Path) -> None:
    for p in out.rglob("*.parquet"):
        assert _parquet_ok(p), p
    outside = [p for p in out.iterdir() if p.name != ".parts"]
    assert all(p.suffix in (".parquet", ".json") and not p.name.startswith(".") for p in outside)
    parts = out / ".parts"
    for part in parts.iterdir() if parts.exists() else []:
        if not part.name.startswith("."):  # a finished part is whole: meta.json and 3 tables
            assert sorted(q.name for q in part.iterdir()) == sorted(
                ["meta.json", *(f"{t}.parquet" for t in TABLES)]
            )


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_mid_run_leaves_no_partial_table_and_resume_completes(
    sig: signal.Signals, tmp_path: Path
) -> None:
    n = 150
    run = _run_folder(tmp_path / "run", n)
    out = tmp_path / "out"
    args = ["analyze", str(run), "-o", str(out), "-q", "--device", "cpu", "--dip-sample", "2048"]
    cmd = [sys.executable, "-m", "adamscope", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = out / ".parts"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if parts.is_dir() and sum(1 for p in parts.iterdir() if not p.name.startswith(".")) >= 5:
            break
        time.sleep(0.002)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    finished = sum(1 for p in parts.iterdir() if not p.name.startswith("."))
    assert 5 <= finished < n, "the run was not interrupted mid-way"
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130 and b"--resume" in err
    assert not (out / "tensors.parquet").exists()
    _check_no_partial_output(out)
    if sig != signal.SIGKILL:
        return

    resumed = analyze(run, options=_opts(out, resume=True))  # what `--resume` runs
    assert len(resumed.skipped) == finished
    _check_no_partial_output(out)
    assert not [p for p in parts.iterdir() if p.name.startswith(".")]  # temp folders cleaned
    assert len(list(parts.iterdir())) == n
    analyze(run, options=_opts(tmp_path / "ref"))
    _assert_same(out, tmp_path / "ref")
