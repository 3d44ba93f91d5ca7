"""Reading ahead: chunks of one tensor, and whole small tensors, read while the engine reduces.

Two layers, each with one background thread and a queue of depth one:

* `ChunkPrefetch` reads (and on a GPU copies) the next chunk of one tensor while the current one is
  reduced; `summarize` uses it for tensors of more than one chunk.
* `TensorPrefetch` reads the next tensor while the current one is summarised, so a checkpoint of
  many small tensors (most of a transformer's) does not wait for the disk tensor by tensor. It
  reads one chunk of each tensor; a longer tensor is handed over with its generator, and the
  thread waits until the consumer has read that tensor's last chunk (or asks for the next tensor)
  before it touches the reader again, so a reader is never used by two threads at once.

Memory: one chunk queued, the one being reduced and the one being read (per layer: the two never
run at once), each chunk released as soon as the engine moves past it.
Errors are re-raised in the consumer's thread, where they would have happened without read-ahead:
an error reading a tensor's chunks surfaces when the engine iterates them.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from adamscope.vocab import TensorState

if TYPE_CHECKING:
    import torch

Chunk = tuple[int, Any, Any, Any]
_END = object()


def to_f32(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A flat float32 tensor on `device` (a CPU float32 tensor is returned as it is)."""
    import torch

    x = x.reshape(-1)
    if device.type == "cuda" and x.device.type == "cpu":
        # through a pinned host buffer: an asynchronous copy, ordered on the device's stream
        x = x.pin_memory().to(device=device, non_blocking=True)
    return x.to(device=device, dtype=torch.float32)


def converted(chunks: Iterator[Chunk], device: torch.device) -> Iterator[Chunk]:
    """Chunks as float32 1-D tensors on `device`, each copied there once."""
    for start, m, v, vmax in chunks:
        yield (
            start,
            to_f32(m, device),
            to_f32(v, device),
            None if vmax is None else to_f32(vmax, device),
        )


class _Worker:
    """A daemon thread feeding a queue of depth `depth`; `close()` stops it."""

    def __init__(self, name: str, depth: int = 1) -> None:
        self._q: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def _main(self) -> None:
        try:
            import torch

            with torch.no_grad():
                self.produce()
            self.put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self.put(e)

    def produce(self) -> None:
        raise NotImplementedError

    def put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> Any:
        item = self._q.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class ChunkPrefetch(_Worker):
    """Iterate `converted(chunks)` with a thread keeping the next chunk ready."""

    def __init__(self, chunks: Iterator[Chunk], device: torch.device, depth: int = 1) -> None:
        super().__init__("adamscope-reader", depth)
        self._it = converted(chunks, device)
        self._thread.start()

    def produce(self) -> None:
        for item in self._it:
            if not self.put(item):
                return

    def __iter__(self) -> Iterator[Chunk]:
        while (item := self.get()) is not _END:
            yield item

    def close(self) -> None:
        super().close()
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


class TensorPrefetch(_Worker):
    """Iterate `states`, the tensors for which `wanted(i)` holds read ahead (see the module doc).

    Use as a context manager or call `close()`; iterate once.
    """

    def __init__(
        self,
        states: Iterator[TensorState],
        *,
        chunk_elems: int,
        device: torch.device,
        wanted: Callable[[int], bool] = lambda i: True,
    ) -> None:
        super().__init__("adamscope-tensor-reader", 1)
        self._states = states
        self._n = chunk_elems
        self._device = device
        self._wanted = wanted
        self._asked = 0  # tensors the consumer has asked for
        self._cond = threading.Condition()
        self._thread.start()

    def produce(self) -> None:
        for i, ts in enumerate(self._states):
            if not self._wanted(i):
                if not self.put(ts):
                    return
                continue
            item, read_out = self._read_ahead(ts)
            if not self.put(item):
                return
            if read_out is not None:  # the consumer reads the rest: wait until it has read it
                with self._cond:  # all, or asks for tensor i + 1 (it may stop early on an error)
                    while not (self._asked > i + 1 or read_out.is_set() or self._stop.is_set()):
                        self._cond.wait(0.05)

    def _read_ahead(self, ts: TensorState) -> tuple[TensorState, threading.Event | None]:
        """The tensor with its first chunk read, and for a longer one an event set once the
        consumer has read its last chunk (then this thread may use the reader again)."""
        n = self._n
        try:
            gen = converted(ts.chunks(n), self._device)
            head = list(itertools.islice(gen, 1))
            single = ts.piece is None and ts.numel <= n
            if single:  # one chunk by its shape: check the reader agrees (reads nothing more)
                head += list(itertools.islice(gen, 1))
        except Exception as e:  # noqa: BLE001 - raised again where the engine reads the chunks
            return replace(ts, chunks=_failing(e)), None
        if single and len(head) <= 1:
            return replace(ts, chunks=_replay(head, n, ts.chunks)), None
        read_out = threading.Event()

        def rest() -> Iterator[Chunk]:
            yield from gen
            read_out.set()
            with self._cond:
                self._cond.notify_all()

        return replace(ts, chunks=_replay(head, n, ts.chunks, rest=rest())), read_out

    def __iter__(self) -> Iterator[TensorState]:
        while True:
            with self._cond:
                self._asked += 1
                self._cond.notify_all()
            item = self.get()
            if item is _END:
                return
            yield item

    def __enter__(self) -> TensorPrefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _replay(
    head: list[Chunk], n: int, original: Callable[[int], Iterator[Chunk]], rest: Any = None
) -> Callable[[int], Iterator[Chunk]]:
    """A chunks() that yields the chunks read ahead (then the rest), once, for chunk size n."""
    used = False

    def chunks(size: int) -> Iterator[Chunk]:
        nonlocal used
        if size != n or used:  # not what was read ahead: read again
            yield from original(size)
            return
        used = True
        while head:  # let go of each chunk once it is handed out
            yield head.pop(0)
        if rest is not None:
            yield from rest

    return chunks


def _failing(error: Exception) -> Callable[[int], Iterator[Chunk]]:
    def chunks(size: int) -> Iterator[Chunk]:
        raise error
        yield  # pragma: no cover - makes this a generator

    return chunks
