"""The shared vocabulary of readers, statistics and tables: hyper-parameters, one tensor's Adam
state, what a checkpoint is. Imports nothing else of adamscope."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, kw_only=True)
class HyperParams:
    """Per-parameter-group Adam hyper-parameters, as stored (lr already advanced by schedulers)."""

    beta1: float
    beta2: float
    eps: float
    lr: float | None = None
    weight_decay: float | None = None
    amsgrad: bool = False
    bias_correction: bool = True
    eps_inside_sqrt: bool = False
    maximize: bool = False
    decoupled_weight_decay: bool | None = None


# A chunk source: given a maximum number of elements per chunk, yields (start, m, v[, vmax]) pieces
# as 1-D float tensors covering the tensor in flat (row-major) order, each piece at most chunk_elems.
# vmax is max_exp_avg_sq for AMSGrad, else None.
ChunkFn = Callable[
    [int], Iterator[tuple[int, "torch.Tensor", "torch.Tensor", "torch.Tensor | None"]]
]


@dataclass(kw_only=True)
class TensorState:
    """Adam state of one parameter tensor (or of one piece of it, see `piece`).

    `chunks(n)` streams m = exp_avg and v = exp_avg_sq in flat order without materialising the whole
    tensor; readers that hold a shard of a tensor yield one TensorState per shard with `piece` set to
    (flat offset of the shard, total numel) so the engine can merge them.
    """

    name: str
    shape: tuple[int, ...]
    step: float
    hp: HyperParams
    dtype: str
    chunks: ChunkFn
    piece: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)
    v_dtype: str | None = None  # exp_avg_sq's stored dtype when it is not `dtype` (quantized v)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True, kw_only=True)
class CheckpointInfo:
    """What `inspect` shows and the manifest records about one checkpoint."""

    path: Path
    format: str
    step: int | None
    n_tensors: int
    n_params: int
    bytes_on_disk: int
    notes: tuple[str, ...] = ()
