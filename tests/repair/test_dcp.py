"""repair of PyTorch Distributed Checkpoint folders: an FSDP2 run written at test time (one gloo
rank, `get_state_dict` + `dcp.save`) reloads with `dcp.load` + `set_state_dict` and trains on; on
the committed 2-rank FSDP2, torchtitan (flattened) and Trainer+FSDP fixtures, the reset tensors
(every shard) are zero and everything else — model, other state, other hyper-parameters — is
bit-identical (both folders converted with torch's own dcp_to_torch_save)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

import adamscope
from adamscope.readers.dcp import DCPReader
from adamscope.readers.registry import ReaderOptions
from adamscope.repair import repair
from adamscope.sim import proxy

from ._make import CFG, differences, leaves, step

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "dcp"


def _as_tree(folder: Path, tmp: Path) -> dict:
    """A DCP folder as one state dict, through torch's own converter (shards assembled)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_folder = folder / "optimizer_0" if (folder / "optimizer_0").is_dir() else folder
    target = Path(tempfile.mkstemp(dir=tmp, suffix=".pt")[1])
    dcp_to_torch_save(dcp_folder, target)
    return torch.load(target, weights_only=True)


def _sharded_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = proxy.build_model(CFG)
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    return model, proxy.build_optimizer(model, CFG)


def test_fsdp2_checkpoint_reloads_and_trains(tmp_path: Path) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    dist.init_process_group(
        "gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1
    )
    try:
        model, opt = _sharded_model()
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            step(model, opt, gen)
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=tmp_path / "ckpt")
        plan = repair(
            tmp_path / "ckpt", tmp_path / "out", reset_layers="block.1", reset_step=True, eps=1e-11
        )
        assert plan.format == "dcp" and {r.layer for r in plan.resets} == {"block.1"}
        assert plan.files_changed == ("__0_0.distcp",)

        model, opt = _sharded_model()
        step(model, opt, torch.Generator().manual_seed(5))  # state to load into
        msd, osd = get_state_dict(model, opt)
        state = {"model": msd, "optim": osd}
        dcp.load(state, checkpoint_id=tmp_path / "out" / "ckpt")
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        assert {g["eps"] for g in opt.param_groups} == {1e-11}
        for name, p in model.named_parameters():
            st = opt.state[p]
            zero = ".h.1." in name
            assert (float(st["step"]) == 0) == zero
            assert (not st["exp_avg"].full_tensor().any()) == zero
        assert torch.isfinite(torch.tensor(step(model, opt, torch.Generator().manual_seed(5))))
    finally:
        dist.destroy_process_group()
    a, b = _as_tree(tmp_path / "ckpt", tmp_path), _as_tree(tmp_path / "out" / "ckpt", tmp_path)
    diff = differences(a, b)
    assert diff and all(".h.1." in k or k.endswith("/eps") for k in diff)
    assert len([k for k in diff if k.endswith("/eps")]) == 2


@pytest.mark.parametrize("layout", ["fsdp2", "torchtitan", "hf_fsdp/checkpoint-5"])
def test_committed_two_rank_checkpoints(layout: str, tmp_path: Path) -> None:
    src = FIXTURES / layout
    name = DCPReader(src, options=ReaderOptions()).names[0]
    plan = repair(src, tmp_path / "out", reset_layers=name, eps=1e-12)
    assert [r.tensor for r in plan.resets] == [name] and plan.eps
    out = plan.checkpoint
    a, b = _as_tree(src, tmp_path), _as_tree(out, tmp_path)
    diff = differences(a, b)
    moments = {k for k in diff if not k.endswith("eps")}
    assert len(moments) == 2 and all(name in k for k in moments)
    assert len(diff - moments) == len(plan.eps)
    flat = leaves(b)
    assert all(not flat[k].any() for k in moments)
    assert all(flat[k] == 1e-12 for k in diff - moments)
    rows = adamscope.analyze(out, gradients=False).tensors
    m = dict(zip(rows["tensor"], rows["m_norm"], strict=True))
    assert m[name] == 0 and all(v > 0 for k, v in m.items() if k != name)
    for f in sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file()):
        if str(f) not in plan.files_changed:
            assert (src / f).read_bytes() == (out / f).read_bytes(), f
