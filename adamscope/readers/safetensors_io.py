"""The one way adamscope reads safetensors files: shapes from the header, flat ranges of a tensor
through `safe_open(...).get_slice(...)` (only the boxes a range covers are read), lazy tensors.

Used by the MLX reader, by the HF Trainer reader (names and shapes of model.safetensors) and by
every reader's `weights()` (the model weights stored beside the optimizer state).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamscope.errors import CorruptCheckpointError

if TYPE_CHECKING:
    import torch

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def flat_slices(shape: tuple[int, ...], a: int, b: int) -> Iterator[tuple[slice, ...]]:
    """Index tuples of boxes that together cover flat (row-major) elements [a, b) in order.

    get_slice indexes per dimension; a flat range splits into at most a few boxes per dimension.
    """
    if not shape:
        yield ()
        return
    if len(shape) == 1:
        yield (slice(a, b),)
        return
    inner = math.prod(shape[1:])
    r0, c0 = divmod(a, inner)
    r1, c1 = divmod(b, inner)
    if r0 == r1:
        for rest in flat_slices(shape[1:], c0, c1):
            yield (slice(r0, r0 + 1), *rest)
        return
    if c0:
        for rest in flat_slices(shape[1:], c0, inner):
            yield (slice(r0, r0 + 1), *rest)
        r0 += 1
    if r1 > r0:
        yield (slice(r0, r1), *(slice(None),) * (len(shape) - 1))
    if c1:
        for rest in flat_slices(shape[1:], 0, c1):
            yield (slice(r1, r1 + 1), *rest)


def read_flat(handle: Any, name: str, shape: tuple[int, ...], a: int, b: int) -> torch.Tensor:
    """Flat elements [a, b) of tensor `name` of an open `safe_open` handle."""
    import torch

    if not shape:
        return handle.get_tensor(name).reshape(1)[a:b]
    sl = handle.get_slice(name)
    parts = [sl[idx].reshape(-1) for idx in flat_slices(shape, a, b)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor in one safetensors file (its header only)."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def model_files(folder: Path) -> list[Path]:
    """The model.safetensors file(s) of a Hugging Face folder (an index's shards, or the one file);
    empty when there are none. Shard names from the index must be plain names inside `folder`.

    Raises:
        CorruptCheckpointError: the index is not valid JSON or names a file outside `folder`.
    """
    from adamscope.readers.base import child_path

    index = folder / INDEX
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CorruptCheckpointError(f"{index}: not a safetensors index ({e})") from e
        return [child_path(folder, str(n), source=index) for n in names]
    return [folder / SINGLE] if (folder / SINGLE).is_file() else []


class SafetensorsTensor:
    """A lazy tensor of a safetensors file: `shape`, `read(start, stop)` in flat order."""

    def __init__(self, file: Path, name: str, shape: tuple[int, ...]) -> None:
        self.file, self.name, self.shape = file, name, shape

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def read(self, start: int, stop: int) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.file), framework="pt") as f:
            return read_flat(f, self.name, self.shape, start, stop)


def lazy_tensors(files: Sequence[Path], *, rename: Any = None) -> dict[str, SafetensorsTensor]:
    """name -> SafetensorsTensor over several files (`rename(name)` maps stored names)."""
    out: dict[str, SafetensorsTensor] = {}
    for file in files:
        for name, shape in shapes(file).items():
            out[rename(name) if rename else name] = SafetensorsTensor(file, name, shape)
    return out
