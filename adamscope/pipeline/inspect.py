"""`inspect`: what a path holds (format, step, hyper-parameter groups, tensors), without reading
any tensor data. The CLI prints it (cli/present.py); a notebook gets the object."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adamscope.config import ReaderOptions
from adamscope.pipeline.discovery import discover
from adamscope.vocab import CheckpointInfo


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]
    dtype: str
    step: float


@dataclass(frozen=True)
class Group:
    """Hyper-parameters shared by some tensors (a param group, as far as the file tells)."""

    beta1: float
    beta2: float
    eps: float
    lr: float | None
    weight_decay: float | None
    amsgrad: bool
    bias_correction: bool
    n_tensors: int


@dataclass(frozen=True)
class Inspection:
    """What `adamscope.inspect(path)` found: every checkpoint at `path` (path, format) and the
    details of the last one (a run folder's newest)."""

    path: Path
    checkpoints: list[tuple[Path, str]]
    info: CheckpointInfo
    step: int | float | None
    groups: list[Group]
    tensors: list[TensorEntry]  # whole tensors; a sharded tensor once
    n_params: int


def inspect_path(path: Path, *, options: ReaderOptions) -> Inspection:
    """Inspect `path` (a checkpoint or a run folder) with the readers' `describe` and metadata.

    The readers validate what they read; every call into them goes through the same `_guard` as
    analyze's, so that inspect and analyze fail on a broken file with the same one line.
    """
    from adamscope.pipeline.run import _guard, _tensors

    found = discover(Path(path))
    f = found[-1]
    reader = _guard(f.path, "cannot open", f.reader, f.path, options=options)
    info = _guard(f.path, "cannot describe", reader.describe)
    groups: dict[tuple, int] = {}
    tensors: list[TensorEntry] = []
    n_params = 0
    step = info.step
    for ts in _tensors(reader, f.path):
        hp = ts.hp
        key = (hp.beta1, hp.beta2, hp.eps, hp.lr, hp.weight_decay, hp.amsgrad, hp.bias_correction)
        groups[key] = groups.get(key, 0) + 1
        numel = ts.piece[1] if ts.piece else ts.numel
        if ts.piece is None or ts.piece[0] == 0:
            tensors.append(TensorEntry(ts.name, tuple(ts.shape), ts.dtype, ts.step))
            n_params += numel
        step = ts.step if step is None else step
    return Inspection(
        path=Path(path),
        checkpoints=[(x.path, getattr(x.reader, "name", "?")) for x in found],
        info=info,
        step=step,
        groups=[Group(*k, n_tensors=n) for k, n in groups.items()],
        tensors=tensors,
        n_params=n_params,
    )
