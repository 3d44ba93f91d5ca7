"""Open checkpoints and stream the matching tensors of two of them together, chunk by chunk.

Readers yield chunks of at most n elements, but two checkpoints (or a reader and a weights file)
need not cut a tensor at the same places; `aligned` re-cuts any number of chunk streams at the union of
their boundaries, so memory stays bounded by about one chunk per stream.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamscope.config import ReaderOptions
from adamscope.errors import AdamscopeError, CorruptCheckpointError
from adamscope.pipeline.discovery import discover
from adamscope.vocab import TensorState

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# (start, (tensor, tensor, ...)): one piece of every quantity a source streams, same length each
Piece = tuple[int, tuple[Any, ...]]
Key = tuple[str, int]  # (parameter name, flat offset of the piece; 0 for whole tensors)


@dataclass
class Side:
    """One opened checkpoint: its TensorStates (lazy: no data read yet) keyed by (name, piece)."""

    path: Path
    states: dict[Key, TensorState]
    reader: Any = None  # the Reader that opened it (for `weights()`)

    @property
    def step(self) -> int | None:
        """The step most tensors carry (they normally all agree)."""
        steps = Counter(int(round(ts.step)) for ts in self.states.values())
        return steps.most_common(1)[0][0] if steps else None


def open_side(path: Path, *, options: ReaderOptions) -> Side:
    """Open one checkpoint (file or checkpoint folder) and collect its TensorStates.

    Raises:
        AdamscopeError: `path` holds several checkpoints, none, or a tensor twice.
    """
    path = Path(path)
    found = discover(path)
    if len(found) != 1:
        raise AdamscopeError(
            f"{path}: holds {len(found)} checkpoints; pass one checkpoint file or folder"
        )
    f = found[0]
    return side_of(f.path, f.reader, options=options)


def side_of(path: Path, reader_cls: type, *, options: ReaderOptions) -> Side:
    """Collect the TensorStates of the checkpoint at `path` read with `reader_cls`."""
    states: dict[Key, TensorState] = {}
    reader = reader_cls(path, options=options)
    for ts in reader.iter_tensors():
        key = (ts.name, ts.piece[0] if ts.piece else 0)
        if key in states:
            raise CorruptCheckpointError(f"{path}: tensor '{ts.name}' appears twice")
        states[key] = ts
    if not states:
        raise AdamscopeError(f"{path}: holds no Adam state")
    return Side(path, states, reader)


def state_source(ts: TensorState, n: int) -> Iterator[Piece]:
    """(start, (m, v, vmax)) pieces of a TensorState; vmax is None without AMSGrad."""
    for start, m, v, vmax in ts.chunks(n):
        yield start, (m.reshape(-1), v.reshape(-1), None if vmax is None else vmax.reshape(-1))


def tensor_source(t: Any, n: int, *, start: int = 0, stop: int | None = None) -> Iterator[Piece]:
    """(start, (x,)) pieces of a lazy tensor (anything with `read(start, stop)` and `shape`)."""
    stop = math.prod(t.shape) if stop is None else stop
    for s in range(start, stop, max(n, 1)):
        yield s - start, (t.read(s, min(s + n, stop)).reshape(-1),)


class _Cursor:
    """A chunk stream that can hand out its elements in pieces of any length."""

    def __init__(self, source: Iterator[Piece], what: str) -> None:
        self.source, self.what = source, what
        self.parts: tuple[Any, ...] = ()
        self.left = 0  # elements of `parts` not yet handed out
        self.expected: int | None = None

    def available(self) -> int:
        while self.left == 0:
            nxt = next(self.source, None)
            if nxt is None:
                return 0
            start, parts = nxt
            if self.expected is not None and start != self.expected:
                raise CorruptCheckpointError(
                    f"{self.what}: chunk starts at {start}, expected {self.expected}"
                )
            self.parts, self.left = parts, int(parts[0].numel())
            self.expected = start + self.left
        return self.left

    def take(self, k: int) -> tuple[Any, ...]:
        n = int(self.parts[0].numel())
        lo = n - self.left
        self.left -= k
        return tuple(None if p is None else p[lo : lo + k] for p in self.parts)


def aligned(
    sources: list[Iterator[Piece]], *, what: str, open_ended: frozenset[int] = frozenset()
) -> Iterator[tuple[int, list[tuple]]]:
    """Re-cut several chunk streams of one tensor at common boundaries.

    Yields (offset from the first element, [parts of source 0, parts of source 1, ...]) with every
    part of the same length. Sources whose index is in `open_ended` may run longer (weights of a
    sharded piece streamed up to the tensor's end); the others must end together.

    Raises:
        CorruptCheckpointError: the streams hold different numbers of elements or skip elements.
    """
    cursors = [_Cursor(s, what) for s in sources]
    pos = 0
    while True:
        avail = [c.available() for c in cursors]
        if min(avail) == 0:
            strict = [a for i, a in enumerate(avail) if i not in open_ended]
            if max(strict) != 0 or min(strict) != 0:
                raise CorruptCheckpointError(
                    f"{what}: the sources hold different numbers of elements (one ends at {pos})"
                )
            return
        k = min(avail)
        yield pos, [c.take(k) for c in cursors]
        pos += k


# Elements handled at once in float64 arithmetic: bounds the working copies (about 15 float64
# arrays of this length, ~30 MB) whatever the reader's chunk size.
WORK_BLOCK = 1 << 18


def in_blocks(
    pieces: Iterator[tuple[int, list[tuple]]], block: int = WORK_BLOCK
) -> Iterator[tuple[int, list[tuple]]]:
    """Split the aligned pieces of `aligned` further into at most `block` elements (views)."""
    for pos, parts in pieces:
        n = int(parts[0][0].numel())
        for lo in range(0, n, block):
            hi = min(lo + block, n)
            yield pos + lo, [tuple(None if x is None else x[lo:hi] for x in p) for p in parts]


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the machine epsilon of a float dtype (2**-24 for float32, 2**-9 for bfloat16)."""
    import torch

    return float(torch.finfo(dtype).eps) / 2


def model_weights(side: Side) -> dict[str, Any] | None:
    """name -> lazy tensor (`shape`, `read(start, stop)`) of the model weights stored with the
    optimizer state of an opened checkpoint, or None: the reader's optional `weights()`."""
    fn = getattr(side.reader, "weights", None)
    return fn() if fn is not None else None
