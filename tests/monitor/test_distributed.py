"""The monitor under DDP and FSDP2 (2 processes over gloo, the same batches on every rank, so
the averaged gradients are bit for bit the single process's): rank 0's tables equal one process's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import adamscope

from ._train import LIVE_COLUMNS, assert_rows_equal

SCRIPT = Path(__file__).with_name("_dist_train.py")


def _train(mode: str, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), mode, str(out)]
    if mode != "single":
        cmd[1:1] = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "mon"
    _train("single", out)
    return adamscope.load(out)


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_rank0_tables_equal_one_process(mode, single, tmp_path):
    _train(mode, tmp_path / "mon")
    got = adamscope.load(tmp_path / "mon")
    assert got.manifest["live"]["processes"] == 2 and got.steps() == [5, 10]
    for step in (5, 10):
        for table, key in (("tensors", "tensor"), ("layers", "layer")):
            a = getattr(got, table).filter(pl.col("step") == step)
            b = getattr(single, table).filter(pl.col("step") == step)
            assert_rows_equal(a, b, key, rtol=1e-6)
    x, y = got.tensors.sort("step", "tensor"), single.tensors.sort("step", "tensor")
    for c in LIVE_COLUMNS:
        np.testing.assert_allclose(x[c].to_numpy(), y[c].to_numpy(), rtol=1e-6, err_msg=c)
    assert not list((tmp_path / "mon").rglob("*.tmp"))
