"""Checkpoints of many rank files for `adamscope bench --shards`: DeepSpeed ZeRO-3 and DCP.

Both hold the same synthetic Adam state (see `tensor_state`) of a nanoGPT-shaped model
(`bench.gpt_shapes`), split over `world` ranks as the frameworks split it:

- ZeRO-3 (`make_zero3`), DeepSpeed 0.19.8's layout, key for key as `fixtures/deepspeed/
  zero3_w2_fp32` (written by DeepSpeed itself) has it: `latest` -> `global_stepN/`, per rank
  `zero_pp_rank_R_mp_rank_00_model_states.pt` (`param_shapes` per sub-group, `dp_world_size`, ...)
  and `zero_pp_rank_R_mp_rank_00_optim_states.pt` (`optimizer_state_dict` -> `zero_stage`,
  `partition_count`, the inner torch AdamW state of one flat exp_avg / exp_avg_sq per sub-group,
  `fp32_flat_groups`). Rank r holds elements [r*c, (r+1)*c) of every parameter, c = ceil(numel/W),
  zero-padded, concatenated per sub-group. Two values are plain Python where DeepSpeed pickles
  its own classes (`zero_stage` an int for `ZeroStageEnum`, `loss_scaler` a dict for
  `LossScaler`): the files load without DeepSpeed and nothing in them is code.
- DCP (`make_dcp`): torch's own `FileSystemWriter` and `DefaultSavePlanner`, with the world of
  ranks simulated in one process (what `dcp.save` does across ranks, done rank by rank: local
  plans, the coordinator's global plan and metadata, each rank's writes, `finish`): one
  `__R_0.distcp` per rank holding FSDP2's dim-0 shards (ceil(dim0 / W) rows each) of
  `optim.state.<fqn>.exp_avg[_sq]`, the replicated `step` and `param_groups` once.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adamscope.perf.bench import gpt_shapes

STEP = 2000
BETAS = (0.9, 0.95)
EPS = 1e-8
LR = 6e-4
DS_VERSION = "0.19.8"  # the DeepSpeed whose layout is written (FORMATS.md)


def param_groups_of(shapes: list[tuple[str, tuple[int, ...]]]) -> list[list[str]]:
    """nanoGPT's two groups: weight matrices (decayed), then vectors, in named_parameters order."""
    return [[n for n, s in shapes if len(s) >= 2], [n for n, s in shapes if len(s) < 2]]


def tensor_state(index: int, numel: int, *, seed: int = 0) -> tuple[Any, Any]:
    """The synthetic flat (exp_avg, exp_avg_sq) of parameter `index`: v = g^2 x lognormal with a
    gradient RMS g log-uniform in 1e-6..1e-2, m = r * sqrt(v_hat) * (1 - b1^t), r ~ N(0, 0.25).
    Deterministic in (index, numel, seed): tests compare what readers return with it."""
    import torch

    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    g = 10.0 ** (-6.0 + 4.0 * float(torch.rand((), generator=gen)))
    v = torch.randn(numel, generator=gen).mul_(0.5).exp_().mul_(g * g)
    scale = (1 - BETAS[0] ** STEP) / math.sqrt(1 - BETAS[1] ** STEP)
    m = torch.randn(numel, generator=gen).mul_(0.25).mul_(v.sqrt()).mul_(scale)
    return m, v


def _adamw_group(weight_decay: float) -> dict[str, Any]:
    """A torch AdamW param group as its state_dict() saves it (without `params`)."""
    return {
        "weight_decay": weight_decay,
        "lr": LR,
        "betas": BETAS,
        "eps": EPS,
        "amsgrad": False,
        "maximize": False,
        "foreach": None,
        "capturable": False,
        "differentiable": False,
        "fused": None,
        "decoupled_weight_decay": True,
    }


def _ds_config(world: int) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": LR, "betas": list(BETAS), "eps": EPS, "torch_adam": True},
        },
        "zero_optimization": {"stage": 3},
        "bf16": {"enabled": False},
        "steps_per_print": 1000,
    }


def zero3_sub_groups(
    shapes: list[tuple[str, tuple[int, ...]]], world: int, sub_group_size: int
) -> list[tuple[int, list[str]]]:
    """(param group, parameter names) of each ZeRO-3 sub-group: parameters of one group are
    gathered until their per-rank partitions reach `sub_group_size` elements (DeepSpeed's
    `sub_group_size`, default 1e9), a group's last sub-group closing at the group's end."""
    numel = {n: math.prod(s) for n, s in shapes}
    out = []
    for g, names in enumerate(param_groups_of(shapes)):
        current: list[str] = []
        size = 0
        for name in names:
            current.append(name)
            size += -(-numel[name] // world)
            if size >= sub_group_size:
                out.append((g, current))
                current, size = [], 0
        if current:
            out.append((g, current))
    return out


def make_zero3(
    folder: Path,
    *,
    params: int,
    world: int,
    sub_group_size: int = 1_000_000_000,
    seed: int = 0,
) -> Path:
    """Write a DeepSpeed ZeRO-3 checkpoint of about `params` parameters over `world` rank files
    into `folder` (created); returns `folder`. Memory: the whole state once (every rank's
    partitions are cut from each parameter as it is generated)."""
    import torch

    shapes = gpt_shapes(params)
    shape_of = dict(shapes)
    index_of = {n: i for i, (n, _) in enumerate(shapes)}
    subs = zero3_sub_groups(shapes, world, sub_group_size)
    tag = f"global_step{STEP}"
    out = folder / tag
    out.mkdir(parents=True, exist_ok=True)
    # per rank, per sub-group: flat exp_avg, exp_avg_sq and fp32 master weights
    flats = [[{} for _ in subs] for _ in range(world)]
    for j, (_, names) in enumerate(subs):
        per_rank = [-(-math.prod(shape_of[n]) // world) for n in names]
        size = sum(per_rank)
        for r in range(world):
            flats[r][j] = {k: torch.zeros(size) for k in ("exp_avg", "exp_avg_sq", "fp32")}
        at = 0
        for name, c in zip(names, per_rank, strict=True):
            n = math.prod(shape_of[name])
            m, v = tensor_state(index_of[name], n, seed=seed)
            w = torch.randn(n, generator=torch.Generator().manual_seed(index_of[name])).mul_(0.02)
            for r in range(world):
                lo, hi = min(n, r * c), min(n, (r + 1) * c)
                for key, src in (("exp_avg", m), ("exp_avg_sq", v), ("fp32", w)):
                    flats[r][j][key][at : at + hi - lo] = src[lo:hi]
            at += c
    groups = [
        {**_adamw_group(0.1), "params": [j for j, (g, _) in enumerate(subs) if g == 0]},
        {**_adamw_group(0.0), "params": [j for j, (g, _) in enumerate(subs) if g == 1]},
    ]
    param_shapes = [OrderedDict((n, torch.Size(shape_of[n])) for n in names) for _, names in subs]
    for r in range(world):
        state = {
            j: {
                "step": torch.tensor(float(STEP)),
                "exp_avg": flats[r][j]["exp_avg"],
                "exp_avg_sq": flats[r][j]["exp_avg_sq"],
            }
            for j in range(len(subs))
        }
        optim = {
            "optimizer_state_dict": {
                "zero_stage": 3,  # DeepSpeed pickles ZeroStageEnum.weights (= 3)
                "loss_scaler": {"cur_scale": 1.0, "dynamic": False},  # a LossScaler there
                "dynamic_loss_scale": False,
                "overflow": False,
                "partition_count": world,
                "optimizer_state_dict": {"state": state, "param_groups": groups},
                "fp32_flat_groups": [flats[r][j]["fp32"] for j in range(len(subs))],
            },
            "ds_config": _ds_config(world),
            "ds_version": DS_VERSION,
        }
        torch.save(optim, out / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
        flats[r] = []  # this rank's partitions are on disk: let them go
        torch.save(_model_states(shapes, param_shapes, world), out / _model_file(r))
    (folder / "latest").write_text(tag)
    return folder


def _model_file(rank: int) -> str:
    return f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt"


def _model_states(
    shapes: list[tuple[str, tuple[int, ...]]], param_shapes: list[Any], world: int
) -> dict[str, Any]:
    """A rank's model_states.pt as ZeRO-3 saves it: empty partitioned params, the shapes."""
    import torch

    return {
        "module": OrderedDict((n, torch.empty(0)) for n, _ in shapes),
        "buffer_names": [],
        "optimizer": None,
        "param_shapes": param_shapes,
        "frozen_param_shapes": OrderedDict(),
        "shared_params": {},
        "frozen_param_fragments": OrderedDict(),
        "lr_scheduler": None,
        "data_sampler": None,
        "random_ltd": None,
        "skipped_steps": 0,
        "global_steps": STEP,
        "global_samples": STEP * world,
        "dp_world_size": world,
        "mp_world_size": 1,
        "checkpoint_parallel_dimensions": {"pp_degree": 1, "tp_degree": 1},
        "ds_config": _ds_config(world),
        "ds_version": DS_VERSION,
    }


# ---- DCP --------------------------------------------------------------------------------------
def _dim0_shards(shape: tuple[int, ...], world: int) -> Iterator[tuple[int, int, int]]:
    """(rank, first row, rows) of FSDP2's dim-0 sharding: ceil(dim0 / W) rows per rank, the
    ranks past the end holding none (those write nothing)."""
    rows = -(-shape[0] // world)
    for r in range(world):
        lo, hi = min(shape[0], r * rows), min(shape[0], (r + 1) * rows)
        if hi > lo:
            yield r, lo, hi - lo


def make_dcp(folder: Path, *, params: int, world: int, seed: int = 0) -> Path:
    """Write a DCP checkpoint (one `.distcp` per rank) of about `params` parameters' Adam state
    into `folder`; returns `folder`. Memory: the whole state once."""
    import torch
    from torch.distributed.checkpoint import FileSystemWriter

    shapes = gpt_shapes(params)
    groups = param_groups_of(shapes)
    # each rank's optimizer state dict as get_state_dict gives it under FSDP2 (nested, by fqn)
    local: list[dict[str, Any]] = [{} for _ in range(world)]
    sharded: list[dict[str, tuple[tuple[int, ...], tuple[int, ...]]]] = [{} for _ in range(world)]
    for index, (name, shape) in enumerate(shapes):
        m, v = tensor_state(index, math.prod(shape), seed=seed)
        for key, full in (("exp_avg", m.view(shape)), ("exp_avg_sq", v.view(shape))):
            for r, lo, rows in _dim0_shards(shape, world):
                local[r].setdefault(name, {})[key] = full[lo : lo + rows]
                where = ((lo,) + (0,) * (len(shape) - 1), tuple(shape))
                sharded[r][f"optim.state.{name}.{key}"] = where
        for r in range(world):  # replicated: every rank has it, the planner writes it once
            local[r].setdefault(name, {})["step"] = torch.tensor(float(STEP))
    pgs = [
        {**_adamw_group(wd), "params": names} for names, wd in zip(groups, (0.1, 0.0), strict=True)
    ]
    state_dicts = [{"optim": {"state": local[r], "param_groups": pgs}} for r in range(world)]
    writer = FileSystemWriter(str(folder), single_file_per_rank=True, thread_count=1)
    planners = [_RankPlanner(sharded[r]) for r in range(world)]
    plans = []
    for r in range(world):
        planners[r].set_up_planner(state_dicts[r], is_coordinator=r == 0)
        writer.set_up_storage_writer(r == 0, rank=r)
        plans.append(writer.prepare_local_plan(planners[r].create_local_plan()))
    global_plans, metadata = planners[0].create_global_plan(plans)
    global_plans = writer.prepare_global_plan(global_plans)
    results = []
    for r in range(world):
        plan = planners[r].finish_plan(global_plans[r])
        fut = writer.write_data(plan, planners[r])
        fut.wait()
        results.append(fut.value())
        state_dicts[r] = local[r] = {}
    writer.finish(metadata, results)
    return folder


def _planner_base() -> type:
    from torch.distributed.checkpoint import DefaultSavePlanner

    return DefaultSavePlanner


class _RankPlanner(_planner_base()):  # type: ignore[misc]
    """torch's DefaultSavePlanner for one simulated rank: its plain local tensors listed in
    `sharded` are written as SHARD items of the global tensor (offsets, global size), as a DTensor
    shard would be; everything else as the default planner writes it."""

    def __init__(self, sharded: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> None:
        super().__init__()
        self.sharded = sharded

    def create_local_plan(self) -> Any:
        import dataclasses

        import torch
        from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex
        from torch.distributed.checkpoint.planner import WriteItemType

        plan = super().create_local_plan()
        items = []
        for item in plan.items:
            where = self.sharded.get(item.index.fqn)
            if where is not None:
                offsets, size = torch.Size(where[0]), torch.Size(where[1])
                chunk = ChunkStorageMetadata(offsets=offsets, sizes=item.tensor_data.chunk.sizes)
                item = dataclasses.replace(
                    item,
                    index=MetadataIndex(item.index.fqn, offsets),
                    type=WriteItemType.SHARD,
                    tensor_data=dataclasses.replace(item.tensor_data, chunk=chunk, size=size),
                )
            items.append(item)
        self.plan = dataclasses.replace(plan, items=items)
        return self.plan

    def lookup_object(self, index: Any) -> Any:
        if index.fqn in self.sharded:
            return self.state_dict[index.fqn]
        return super().lookup_object(index)
