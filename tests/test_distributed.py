"""`torchrun --nproc-per-node 2 -m adamscope analyze` writes the same tables as one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from adamscope.api import AnalyzeOptions, analyze

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


# formats that store no betas/eps get them as flags (the values their fixture runs used)
HP_FLAGS = ["--beta1", "0.9", "--beta2", "0.95", "--eps", "1e-8"]
SOURCES = {
    "hf_trainer/gpt2": [],
    "olmo_core/run": [],  # OLMo-core's Checkpointer: DCP in stepN/model_and_optim/, 2 steps
    "dcp_safetensors/hf_run": HP_FLAGS,  # HuggingFaceStorageWriter per-rank files, 2 steps
    "orbax/run": HP_FLAGS,  # Orbax + optax, 2 steps (needs tensorstore)
    "megatron/tp1/dp_reshardable": [],  # Megatron-core torch_dist, iterations 2 and 3
    "megatron/tp2/legacy": [],  # Megatron-LM --ckpt-format torch, TP 2 x DP 2 (TP shards joined)
}


@pytest.mark.parametrize("rel", list(SOURCES))
def test_two_processes_over_gloo_equal_one_process(tmp_path: Path, rel: str) -> None:
    if rel.startswith("orbax"):
        pytest.importorskip("tensorstore")
    src, flags = FIXTURES / rel, SOURCES[rel]
    hp = {"beta1": 0.9, "beta2": 0.95, "eps": 1e-8} if flags else {}
    analyze(src, options=AnalyzeOptions(out=tmp_path / "one").updated(**hp))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "adamscope",
        "analyze",
        str(src),
        "-o",
        str(tmp_path / "two"),
        "-q",
        "--device",
        "cpu",
        *flags,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for table in ("tensors", "layers", "histograms"):
        one = pl.read_parquet(tmp_path / "one" / f"{table}.parquet")
        two = pl.read_parquet(tmp_path / "two" / f"{table}.parquet")
        assert one.height > 0
        # counts exact; moments equal to 1e-9 relative (merge order is the same, so in fact identical)
        assert_frame_equal(one, two, check_exact=False, rel_tol=1e-9)
    manifest = (tmp_path / "two" / "manifest.json").read_text()
    assert '"processes": 2' in manifest
