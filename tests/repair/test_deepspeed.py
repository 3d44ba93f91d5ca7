"""repair of DeepSpeed ZeRO checkpoints. On the committed ZeRO 1/2/3 fixtures (DeepSpeed 0.19.8,
fixtures/make_deepspeed.py; 1 and 2 ranks, fp32 and bf16): exactly the reset parameters' elements
of every rank's flat exp_avg/exp_avg_sq become 0 (a parameter straddling two ranks' partitions
included), every other element and file is bit-identical, eps is set in every rank file. With
deepspeed installed (not a project dependency): a run written at test time by DeepSpeed on 2 CPU
ranks reloads with `engine.load_checkpoint` after the repair and trains one more step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import adamscope
from adamscope.readers.deepspeed import DeepSpeedReader
from adamscope.readers.registry import ReaderOptions
from adamscope.readers.torchzip import load_lazy
from adamscope.repair import repair
from adamscope.repair.torch_file import lazy_tensors

from ._make import same_bits

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "deepspeed"
RESET = {"fc1.weight", "head.weight"}  # fc1.weight spans both ranks' partitions


def _states(folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    for ts in DeepSpeedReader(folder, options=ReaderOptions()).iter_tensors():
        parts = list(ts.chunks(1 << 20))
        out[ts.name] = (torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]))
    return out


@pytest.mark.parametrize(
    "run", ["zero1_w1_fp32", "zero1_w2_bf16", "zero2_w2_fp32", "zero3_w2_fp32"]
)
def test_committed_zero_checkpoints(run: str, tmp_path: Path) -> None:
    src = FIXTURES / run
    plan = repair(src, tmp_path / "out", reset_layers="fc1.weight,head.weight", eps=1e-9)
    assert {r.tensor for r in plan.resets} == RESET and plan.format == "deepspeed"
    out = plan.checkpoint
    before, after = _states(src), _states(out)
    for name, (m, v) in after.items():
        if name in RESET:
            assert not m.any() and not v.any(), name
        else:
            assert same_bits(m, before[name][0]) and same_bits(v, before[name][1]), name
    n_reset = sum(before[n][0].numel() for n in RESET)
    changed = 0
    for f in sorted((src / "global_step5").glob("*optim_states.pt")):
        a, b = load_lazy(f), load_lazy(out / "global_step5" / f.name)
        for x, y in zip(lazy_tensors(a), lazy_tensors(b), strict=True):
            xa, ya = x.read(0, x.numel), y.read(0, y.numel)
            diff = (
                xa.view(torch.uint8)
                .reshape(-1, x.itemsize)
                .ne(ya.view(torch.uint8).reshape(-1, y.itemsize))
                .any(1)
            )
            assert not ya[diff].any()  # what changed became 0
            changed += int(diff.sum())
        inner = b["optimizer_state_dict"]
        inner = inner.get("base_optimizer_state") or inner["optimizer_state_dict"]
        assert {g["eps"] for g in inner["param_groups"]} == {1e-9}
    assert changed == 2 * n_reset  # m and v of the reset parameters, nothing else (padding kept)
    for f in sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file()):
        if "optim_states" not in f.name:
            assert (src / f).read_bytes() == (out / f).read_bytes(), f
    rows = adamscope.analyze(out, gradients=False).tensors
    assert {t for t, m in zip(rows["tensor"], rows["m_norm"], strict=True) if m == 0} == RESET


def test_step_reset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(adamscope.AdamscopeError, match="one step per parameter group"):
        repair(FIXTURES / "zero2_w2_fp32", tmp_path / "out", reset_layers="head", reset_step=True)
    assert not (tmp_path / "out").exists()


_WORKER = Path(__file__).with_name("_deepspeed_run.py")


def _torchrun(*args: str) -> dict:
    env = os.environ | {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2"]
    cmd += ["--master-port=29541", str(_WORKER), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(Path(args[-1]).read_text())


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_load_checkpoint_after_repair(stage: int, tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    _torchrun("train", str(stage), str(tmp_path / "run"), str(tmp_path / "train.json"))
    plan = repair(tmp_path / "run", tmp_path / "out", reset_layers="head", eps=1e-7)
    head = ["head.bias", "head.weight", "norm.bias", "norm.weight"]  # the layer "head"
    assert sorted(r.tensor for r in plan.resets) == head
    result = _torchrun("resume", str(stage), str(plan.checkpoint), str(tmp_path / "resume.json"))
    assert result["eps"] == [1e-7] * len(result["eps"])
    assert result["zero"] == head  # as loaded, before the next step
    assert result["steps"] == 4 and result["finite"]
