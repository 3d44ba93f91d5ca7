"""The reader interface: every checkpoint family yields `TensorState`s, lazily, one at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from adamscope.config import ReaderOptions
from adamscope.readers.guard import brief
from adamscope.vocab import CheckpointInfo, ChunkFn, HyperParams, TensorState

__all__ = [
    "CheckpointInfo",
    "ChunkFn",
    "HyperParams",
    "Reader",
    "ReaderOptions",
    "TensorState",
    "child_path",
    "inside",
]


def child_path(folder: Path, name: str, *, source: Path) -> Path:
    """`folder / name` for a file name read from a checkpoint, refusing anything that leaves the
    folder (absolute paths, `..`, separators): a checkpoint must not make adamscope read elsewhere.

    Raises:
        CorruptCheckpointError: `name` is not a plain name inside `folder`.
    """
    from adamscope.errors import CorruptCheckpointError

    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise CorruptCheckpointError(
            f"{source}: refers to {brief(name, 200)}, which is not a file name in {folder}"
        )
    return inside(folder, folder / name, source=source)


def inside(folder: Path, path: Path, *, source: Path) -> Path:
    """`path`, checked to stay inside `folder` after symlinks are followed (a symlinked checkpoint
    folder itself is fine: both sides are resolved). A path that does not exist is returned as
    it is (its reader reports it missing).

    Raises:
        CorruptCheckpointError: `path` is a symlink (or under one) that leads outside `folder`,
            or a symlink loop.
    """
    import os

    from adamscope.errors import CorruptCheckpointError

    if not os.path.lexists(path):
        return path
    try:
        real, root = path.resolve(strict=True), folder.resolve(strict=True)
    except (OSError, RuntimeError) as e:  # a loop, or a dangling link
        raise CorruptCheckpointError(
            f"{source}: {path} is a broken symlink or a symlink loop ({type(e).__name__})"
        ) from e
    if real != root and root not in real.parents:
        raise CorruptCheckpointError(
            f"{source}: {path} leads outside the checkpoint folder {folder} (to {real}); "
            "adamscope reads only inside the checkpoint"
        )
    return path


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

    # Optional: `weights(self) -> dict[str, lazy tensor] | None`, the model weights stored with the
    # optimizer state (name -> object with `shape` and `read(start, stop)` in flat order), for the
    # forensics that need theta (diff, coupled weight decay). Readers without it hold no weights.
