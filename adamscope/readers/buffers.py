"""A small pool of reusable read buffers, so streaming a checkpoint does not grow the heap.

Readers allocate a fresh tensor per chunk. glibc serves a freed 16 MB block from the heap after
the first one (its mmap threshold adapts upwards), and blocks freed by several threads fragment
the heap: peak RSS then drifts with the checkpoint's size. Forcing mmap per allocation costs page
faults (~0.4 s per 250M parameters here). Instead, `empty(n, dtype)` hands out views of pooled
numpy buffers: a buffer is reused only when nothing references it any more (its refcount, which
every torch tensor or view made from it raises, is back to the pool's own), so a chunk a caller
keeps is never overwritten. Memory: at most `_MAX_BUFFERS` buffers of the largest chunk size seen.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

_MIN_BYTES = 1 << 20  # smaller reads: plain allocations (malloc handles them well)
_MAX_BUFFERS = 12  # chunks in flight: prefetch queues, the chunk being reduced, read-ahead
_lock = threading.Lock()
_pool: list[np.ndarray] = []
_pinned = 0  # > 0 within `pinned_reads()`: reads land in page-locked memory


@contextlib.contextmanager
def pinned_reads(*, enabled: bool = True) -> Iterator[None]:
    """Within (when `enabled`: the reductions run on a GPU): `empty`, so every positional read,
    allocates page-locked host memory, from
    torch's caching host allocator rather than this pool. A chunk then goes to the GPU in one
    asynchronous DMA straight from the bytes read (`pin_memory()` of a pinned tensor is the tensor
    itself): no staging copy. The caching allocator, not a refcount, decides when a block may be
    reused: it waits for the copies recorded on it, so a block is never overwritten mid-copy."""
    global _pinned
    if not enabled:
        yield
        return
    with _lock:
        _pinned += 1
    try:
        yield
    finally:
        with _lock:
            _pinned -= 1


def empty(n: int, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised 1-D CPU tensor of n elements, from the pool when it is large (pinned
    within `pinned_reads()`)."""
    import torch

    if _pinned:
        return torch.empty(n, dtype=dtype, pin_memory=True)
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = n * itemsize
    if nbytes < _MIN_BYTES:
        return torch.empty(n, dtype=dtype)
    buf = _take(nbytes)
    if buf is None:
        return torch.empty(n, dtype=dtype)
    return torch.from_numpy(buf[:nbytes]).view(dtype)


def pread(file: str | os.PathLike[str], pos: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """n elements of `dtype` from byte `pos` of `file`, by positional reads into `empty(n)`.

    Raises:
        CorruptCheckpointError: the file ends before the n elements do.
    """
    out = empty(max(0, n), dtype)
    if n > 0:
        pread_into(file, pos, out)
    return out


def pread_into(file: str | os.PathLike[str], pos: int, out: torch.Tensor) -> None:
    """Fill the contiguous CPU tensor `out` with the bytes from byte `pos` of `file`.

    Raises:
        CorruptCheckpointError: the file ends before `out` is full.
    """
    import torch

    from adamscope.errors import CorruptCheckpointError

    buf = memoryview(out.view(torch.uint8).numpy()).cast("B")
    fd = os.open(file, os.O_RDONLY)
    try:
        done = 0
        while done < len(buf):
            got = os.preadv(fd, [buf[done:]], pos + done)
            if got <= 0:
                raise CorruptCheckpointError(f"{file}: truncated at byte {pos + done}")
            done += got
    finally:
        os.close(fd)


def _free(i: int) -> bool:
    """Whether pool entry i is referenced by nothing but the pool (no tensor or view uses it)."""
    b = _pool[i]
    return sys.getrefcount(b) <= 3  # the pool's slot, `b` and getrefcount's argument


def _take(nbytes: int) -> np.ndarray | None:
    with _lock:
        best = None
        for i in range(len(_pool)):  # by index: an enumerate tuple would hold a reference too
            if _pool[i].nbytes >= nbytes and _free(i):
                if best is None or _pool[i].nbytes < _pool[best].nbytes:
                    best = i
        if best is not None:
            return _pool[best]
        if len(_pool) < _MAX_BUFFERS:
            _pool.append(np.empty(_round_up(nbytes), dtype=np.uint8))
            return _pool[-1]
        for i in range(len(_pool)):  # full: replace a free buffer that is too small
            if _free(i):
                _pool[i] = np.empty(_round_up(nbytes), dtype=np.uint8)
                return _pool[i]
        return None


def _round_up(nbytes: int) -> int:
    return -(-nbytes // _MIN_BYTES) * _MIN_BYTES


def clear() -> None:
    """Drop the pool (buffers still in use stay alive with their tensors)."""
    with _lock:
        _pool.clear()
