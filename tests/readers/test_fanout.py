"""The reader pool (readers/fanout.py): chunks cut over many pieces, read on several threads."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
import torch

from adamscope.errors import CorruptCheckpointError
from adamscope.readers import fanout


class _Slow:
    """A flat in-memory source whose reads sleep a random moment: completion order varies."""

    def __init__(self, values: torch.Tensor, rng: random.Random) -> None:
        self.values, self.rng, self.lock = values, rng, threading.Lock()
        self.dtype, self.numel = values.dtype, values.numel()

    def read(self, a: int, b: int) -> torch.Tensor:
        with self.lock:
            pause = self.rng.random() * 3e-4
        time.sleep(pause)
        return self.values[a:b].clone()


def _pieces(
    sizes: list[int], seed: int = 0
) -> tuple[list[fanout.Piece], torch.Tensor, torch.Tensor]:
    """Pieces of a tensor as ZeRO-3 lays them out: piece r is elements [start, start+count) of a
    flat rank buffer that also holds other values (the start is not 0)."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    pieces, m_all, v_all, offset = [], [], [], 0
    for count in sizes:
        pad = 3
        m = torch.randn(count + 2 * pad, generator=gen)
        v = torch.rand(count + 2 * pad, generator=gen)
        src = (_Slow(m, rng), _Slow(v, rng), None)
        pieces.append(fanout.Piece(offset, count, lambda s=src: s, start=pad))
        m_all.append(m[pad : pad + count])
        v_all.append(v[pad : pad + count])
        offset += count
    return pieces, torch.cat(m_all), torch.cat(v_all)


def _collect(
    pieces: list[fanout.Piece], n: int, workers: int
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    starts, ms, vs = [], [], []
    for start, m, v, vmax in fanout.stream(pieces, n, workers=workers):
        assert vmax is None and m.numel() == v.numel() <= n
        starts.append(start)
        ms.append(m.clone())
        vs.append(v.clone())
    return starts, torch.cat(ms), torch.cat(vs)


@pytest.mark.parametrize("n", [1, 7, 64, 1000])
def test_same_result_with_one_and_four_threads(n: int) -> None:
    sizes = [13, 13, 13, 13, 13, 0, 13, 9, 40, 1]  # uneven, an empty rank, a long piece
    pieces, m, v = _pieces(sizes)
    one = _collect(pieces, n, workers=1)
    four = _collect(pieces, n, workers=4)
    assert one[0] == four[0]
    assert torch.equal(one[1], m) and torch.equal(four[1], m)
    assert torch.equal(one[2], v) and torch.equal(four[2], v)
    assert one[0] == list(range(0, m.numel(), n))  # contiguous pieces: full chunks of n


def test_order_of_reads_does_not_matter() -> None:
    pieces, m, _ = _pieces([5] * 64, seed=1)
    for seed in range(3):  # other sleep patterns, other completion orders
        for p in pieces:
            for s in p.sources()[:2]:
                s.rng.seed(seed)
        assert torch.equal(_collect(pieces, 50, workers=4)[1], m)


def test_plan_ends_a_chunk_at_a_gap() -> None:
    noop = lambda: (None, None, None)  # noqa: E731
    pieces = [fanout.Piece(0, 4, noop), fanout.Piece(4, 4, noop), fanout.Piece(10, 4, noop)]
    chunks = fanout.plan(pieces, 6)
    assert [(s, size) for s, size, _ in chunks] == [(0, 6), (6, 2), (10, 4)]
    assert chunks[0][2] == [(0, 0, 4, 0), (1, 0, 2, 4)]


def test_a_failing_read_raises_in_the_caller() -> None:
    class Bad(_Slow):
        def read(self, a: int, b: int) -> torch.Tensor:
            raise CorruptCheckpointError("rank7.pt: truncated at byte 12")

    pieces, _, _ = _pieces([8, 8])
    bad = Bad(torch.zeros(8), random.Random(0))
    pieces[1] = fanout.Piece(8, 8, lambda: (bad, bad, None))
    with pytest.raises(CorruptCheckpointError, match="rank7.pt: truncated"):
        _collect(pieces, 16, workers=4)


def test_done_is_called_once_per_piece_after_its_last_chunk() -> None:
    pieces, _, _ = _pieces([10, 10, 10])
    seen = []
    list(fanout.stream(pieces, 4, done=lambda src: seen.append(src), workers=4))
    assert len(seen) == 3 and all(s is p.sources() for s, p in zip(seen, pieces, strict=True))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_reads_with_its_own_pool() -> None:
    """The parent's reader threads do not exist in a forked child: it must not wait for them."""
    pieces, m, _ = _pieces([6] * 8, seed=2)
    assert torch.equal(_collect(pieces, 20, workers=4)[1], m)  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # the child: exit 0 when its read is right
        ok = torch.equal(_collect(pieces, 20, workers=4)[1], m)
        os._exit(0 if ok else 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child's read hung")
