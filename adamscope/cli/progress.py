"""A rich progress display for long analyses (checkpoints and tensors); silent when disabled."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any


class RichProgress:
    """Two bars: checkpoints of the run, and the tensors of the current checkpoint, whose count
    of elements read moves with every chunk (a tensor of billions of elements takes minutes)."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._ckpt: Any = None
        self._elems: Any = None
        self._tensors, self._read, self._name = 0, 0, ""

    def __enter__(self) -> RichProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            if self._ckpt is not None and et is None:
                self._progress.update(self._ckpt, completed=self._progress.tasks[self._ckpt].total)
            self._progress.__exit__(et, ev, tb)

    def checkpoint(self, index: int, total: int, path: Path) -> None:
        if self._progress is None:
            return
        if self._ckpt is None:
            self._ckpt = self._progress.add_task("checkpoints", total=total)
            self._elems = self._progress.add_task("tensors", total=None)
        self._progress.update(self._ckpt, completed=index, description=f"checkpoint {path.name}")
        self._progress.reset(self._elems, total=None, description="  tensors")
        self._tensors, self._read = 0, 0

    def tensor(self, name: str, numel: int) -> None:
        if self._progress is not None and self._elems is not None:
            self._tensors += 1
            self._progress.update(self._elems, description=self._text(name))

    def elements(self, n: int) -> None:
        """Called from the reading thread per chunk; rich's updates take its lock."""
        if self._progress is not None and self._elems is not None:
            self._read += n
            self._progress.update(self._elems, completed=self._read, description=self._text())

    def _text(self, name: str | None = None) -> str:
        if name is not None:
            self._name = name[-40:]
        return f"  {self._tensors} tensors, {self._name}"
