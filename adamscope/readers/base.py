"""The reader interface: every checkpoint family yields `TensorState`s, lazily, one at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch


def child_path(folder: Path, name: str, *, source: Path) -> Path:
    """`folder / name` for a file name read from a checkpoint, refusing anything that leaves the
    folder (absolute paths, `..`, separators): a checkpoint must not make adamscope read elsewhere.

    Raises:
        CorruptCheckpointError: `name` is not a plain name inside `folder`.
    """
    from adamscope.errors import CorruptCheckpointError

    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise CorruptCheckpointError(
            f"{source}: refers to {name!r}, which is not a file name in {folder}"
        )
    return folder / name


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


class Reader(Protocol):
    """One checkpoint family. Implementations live in one module each under readers/."""

    name: str

    @classmethod
    def probe(cls, path: Path) -> bool:
        """True when `path` (a file or folder) looks like this family; cheap, never loads tensors."""
        ...

    def __init__(self, path: Path, *, options: ReaderOptions) -> None: ...

    def describe(self) -> CheckpointInfo:
        """Summary without reading tensor data."""
        ...

    def iter_tensors(self) -> Iterator[TensorState]:
        """Yield the Adam state of each parameter tensor in model order, lazily."""
        ...


@dataclass(frozen=True, kw_only=True)
class ReaderOptions:
    """Options that affect how a checkpoint is read (not how it is analysed)."""

    model: Path | None = None  # a model state_dict / folder to recover parameter names from
    trust_pickle: bool = False  # DANGEROUS: allow arbitrary pickle globals
    beta1: float | None = None  # for formats that do not store betas/eps (MLX)
    beta2: float | None = None
    eps: float | None = None
    bias_correction: bool | None = None
