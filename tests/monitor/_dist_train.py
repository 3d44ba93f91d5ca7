"""Run by tests/monitor/test_distributed.py: the tiny proxy GPT trained 10 steps on the same
batches on every rank, monitored every 5 steps, as one process (`single`), under DDP (`ddp`) or
FSDP2 (`fsdp2`, torch.distributed.fsdp.fully_shard), over gloo on CPU.

    python -m torch.distributed.run --standalone --nproc-per-node 2 _dist_train.py MODE OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train import batches, loss_of, tiny_config  # noqa: E402

from adamscope.monitor import attach  # noqa: E402
from adamscope.sim import proxy  # noqa: E402


def main(mode: str, out: str) -> None:
    torch.set_num_threads(1)
    if mode != "single":
        dist.init_process_group("gloo")
    cfg = tiny_config()
    model = proxy.build_model(cfg)
    wrapped = model
    if mode == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    elif mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)
        from torch.distributed.tensor import DTensor

        p = model.transformer.h[0].mlp.c_fc.weight
        assert isinstance(p, DTensor) and p.to_local().numel() < p.numel()  # really sharded
    opt = proxy.build_optimizer(model, cfg)
    mon = attach(opt, model=wrapped, out=out, every=5)
    for x in batches(10, cfg):
        loss = loss_of(wrapped, x)
        loss.backward()
        opt.step()
        opt.zero_grad()
    mon.close()
    if mode != "single":
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
