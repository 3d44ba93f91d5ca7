"""A monitored run killed with SIGKILL loses at most the flush in progress: every part on disk is
whole, the manifest is valid, load() works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl

import adamscope


def test_sigkill_loses_at_most_the_flush_in_progress(tmp_path: Path) -> None:
    out = tmp_path / "mon"
    script = Path(__file__).with_name("_crash.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    t = adamscope.load(out)
    steps = t.steps()
    assert steps[:3] == [2, 4, 6] and set(steps) <= {2, 4, 6, 8}
    for part in (out / "live").rglob("*.parquet"):
        pl.read_parquet(part)  # every visible part is whole
    assert t.manifest["live"]["steps"][:3] == [2, 4, 6]
    assert t.tensors.filter(pl.col("step") == 6).height == t.tensors["tensor"].n_unique()
    # a flush counts once the manifest lists it: the tables agree on their steps
    assert sorted(set(t.layers["step"])) == sorted(set(t.tensors["step"])) == steps


def test_a_restart_keeps_the_steps_on_disk(tmp_path: Path) -> None:
    import torch

    from adamscope.monitor import attach
    from adamscope.sim import proxy

    from ._train import batches, loss_of, tiny_config

    cfg = tiny_config()
    model = proxy.build_model(cfg)
    opt = proxy.build_optimizer(model, cfg)
    xs = batches(6, cfg)
    for part in (xs[:4], xs[4:]):  # the second monitor: the run restarted in the same process
        with attach(opt, model=model, out=tmp_path / "mon", every=2):
            for x in part:
                loss_of(model, x).backward()
                opt.step()
                opt.zero_grad()
    assert adamscope.load(tmp_path / "mon").steps() == [2, 4, 6]
    assert torch.is_tensor(opt.state[next(iter(model.parameters()))]["step"])
