"""Reading a tensor held in pieces by many files: a small pool of reader threads.

ZeRO-3 keeps 1/W of every parameter in each of W rank files, DCP one dim-0 shard per rank, so at
64 ranks a tensor is 64 small pieces in 64 files. Read one after the other, every piece waits for
its own read call (and, for DCP, for its blob's header to be parsed), and the engine receives
64 small chunks. `stream` instead cuts the pieces into chunks of at most n elements (one chunk
spans as many consecutive pieces as fit), reads the pieces of a chunk on a few threads straight
into one buffer, and starts the next chunk before handing out the current one.

Memory is bounded by chunks, not files: per stream the chunk handed out and the one being read
(m, v and max v of at most n elements each), whatever the number of ranks. The result does not
depend on the number of threads or on the order reads finish: every element is read into its
own place (tests/readers/test_fanout.py).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from adamscope.errors import CorruptCheckpointError

# reader threads shared by every stream: reads release the GIL, so a few keep a disk queue (or
# the page cache's copies) busy; ADAMSCOPE_READ_THREADS overrides, 1 reads in the caller's thread
_DEFAULT_THREADS = 4
_pools: dict[int, ThreadPoolExecutor] = {}  # by size: a stream never loses its pool midway
_pool_lock = threading.Lock()


def _forget_pools() -> None:
    """In a forked child: the parent's pool threads do not exist there (a submit would wait
    forever); new pools are made on demand."""
    global _pool_lock
    _pools.clear()
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)

Sources = tuple[Any, Any, Any]  # (m, v, max v or None): objects with numel, dtype, read(a, b)
Chunk = tuple[int, Any, Any, Any]


@dataclass(frozen=True)
class Piece:
    """Elements [start, start + count) of the flat `sources()` are the tensor's elements
    [offset, offset + count). `sources` is called once, on a reader thread, when the piece is
    first read (a DCP blob is parsed there, not up front)."""

    offset: int
    count: int
    sources: Callable[[], Sources]
    start: int = 0


def threads() -> int:
    """Reader threads: ADAMSCOPE_READ_THREADS, else 4."""
    raw = os.environ.get("ADAMSCOPE_READ_THREADS", "")
    try:
        return max(1, int(raw)) if raw else _DEFAULT_THREADS
    except ValueError:
        return _DEFAULT_THREADS


def _executor(n: int) -> ThreadPoolExecutor | None:
    if n <= 1:
        return None
    with _pool_lock:
        pool = _pools.get(n)
        if pool is None:
            pool = _pools[n] = ThreadPoolExecutor(
                max_workers=n, thread_name_prefix="adamscope-read"
            )
        return pool


# one chunk: its flat start, its length, and (piece index, first, stop within the piece, place)
_Plan = tuple[int, int, list[tuple[int, int, int, int]]]


def plan(pieces: Sequence[Piece], n: int) -> list[_Plan]:
    """Chunks of at most n elements over consecutive pieces; a gap between pieces ends a chunk."""
    out: list[_Plan] = []
    start, size, parts = 0, 0, []
    for i, p in enumerate(pieces):
        a = 0
        while a < p.count:
            if parts and (size == n or start + size != p.offset + a):
                out.append((start, size, parts))
                parts, size = [], 0
            if not parts:
                start = p.offset + a
            b = min(p.count, a + n - size)
            parts.append((i, a, b, size))
            size += b - a
            a = b
    if parts:
        out.append((start, size, parts))
    return out


class _Opened:
    """Each piece's sources, opened once (by whichever thread needs them first), dropped after
    the piece's last chunk has been read."""

    def __init__(self, pieces: Sequence[Piece]) -> None:
        self.pieces = pieces
        self.sources: dict[int, Sources] = {}
        self.locks = [threading.Lock() for _ in pieces]

    def get(self, i: int) -> Sources:
        with self.locks[i]:
            src = self.sources.get(i)
            if src is None:
                src = self.sources[i] = self.pieces[i].sources()
            return src


def _dtype(src: Any) -> Any:
    """The torch dtype of a source (DCP's lazy tensors keep their dtype's name in `dtype`)."""
    return getattr(src, "torch_dtype", None) or src.dtype


def _read_into(src: Any, a: int, b: int, out: Any) -> None:
    read_into = getattr(src, "read_into", None)
    if read_into is not None:
        read_into(a, b, out)
        return
    part = src.read(a, b)
    if part.numel() != b - a:
        raise CorruptCheckpointError(f"{src!r}: {part.numel()} elements read, {b - a} asked for")
    out.copy_(part.reshape(-1))


def _task(opened: _Opened, parts: list[tuple[int, int, int, int]], outs: list[Any]) -> None:
    """For each (i, a, b, at): elements [a, b) of piece i into outs[k][at:at + b - a], for m, v
    (and max v)."""
    for i, a, b, at in parts:
        start = opened.pieces[i].start
        for src, out in zip(opened.get(i), outs, strict=True):
            if out is None:
                continue
            if src is None:
                raise CorruptCheckpointError(f"{opened.get(i)[0]!r}: max_exp_avg_sq is missing")
            _read_into(src, start + a, start + b, out[at : at + b - a])


def _split(parts: list[Any], k: int) -> list[list[Any]]:
    """`parts` in at most k runs of about equal length (one task per reader thread)."""
    step = -(-len(parts) // k)
    return [parts[j : j + step] for j in range(0, len(parts), step)]


def stream(
    pieces: Sequence[Piece],
    n: int,
    *,
    done: Callable[[Sources], None] | None = None,
    workers: int | None = None,
) -> Iterator[Chunk]:
    """Chunks (start, m, v, max v or None) of at most n elements covering the pieces in order.

    Args:
        pieces: the tensor's pieces in flat order.
        n: most elements per chunk.
        done: called in the caller's thread with a piece's sources once all of it is read.
        workers: reader threads (default `threads()`); 1 reads in the caller's thread.
    Raises:
        whatever reading a piece raises, in the caller's thread.
    """
    from adamscope.readers import buffers

    chunks = plan([p for p in pieces if p.count > 0], n)
    pieces = [p for p in pieces if p.count > 0]
    if not chunks:
        return
    opened = _Opened(pieces)
    size = threads() if workers is None else workers
    pool = _executor(size)
    last = {i: k for k, (_, _, parts) in enumerate(chunks) for i, _, _, _ in parts}

    def submit(k: int) -> tuple[list[Any], list[Future[None]]]:
        start, size, parts = chunks[k]
        first = opened.get(parts[0][0])
        outs = [None if s is None else buffers.empty(size, _dtype(s)) for s in first]
        if pool is None or len(parts) == 1:
            _task(opened, parts, outs)
            return outs, []
        return outs, [pool.submit(_task, opened, run, outs) for run in _split(parts, size)]

    ahead = submit(0)
    for k in range(len(chunks)):
        outs, futures = ahead
        ahead = submit(k + 1) if k + 1 < len(chunks) else ([], [])
        for f in futures:
            f.result()
        for i, _, _, _ in chunks[k][2]:
            if last[i] == k:
                src = opened.sources.pop(i, None)
                if done is not None and src is not None:
                    done(src)
        yield chunks[k][0], outs[0], outs[1], outs[2]
