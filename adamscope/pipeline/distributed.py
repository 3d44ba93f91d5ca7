"""Splitting analyze across processes with torch.distributed (`torchrun ... -m adamscope analyze`).

Every rank reads the same checkpoint list and enumerates the same (lazy) TensorStates; rank r
summarises the ones whose position i has i % world == r, and the sketches travel to rank 0, which
merges them in position order — the same order a single process uses, so the tables are the same.
Only rank 0 writes. Errors on any rank are gathered and raised on every rank, so nobody hangs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, index: int) -> bool:
        return index % self.world == self.rank

    def gather(self, obj: Any) -> list[Any] | None:
        """Objects from every rank, on rank 0 (None elsewhere)."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj`, on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def current() -> Dist:
    """The running job, when torch.distributed is initialised."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch built without distributed
        return Dist()
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size())
    return Dist()


def init_from_env(device: str) -> Dist:
    """Join the process group torchrun describes in the environment (no-op for a single process).

    Backend: NCCL when analysing on CUDA, gloo otherwise (the object collectives go through it).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    d = current()
    log.info("rank %d of %d", d.rank, d.world)
    return d


def shutdown() -> None:
    """Leave the process group `init_from_env` joined (gloo's threads must not outlive it at exit)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no rank tears its connections down while another still uses them
        dist.destroy_process_group()
