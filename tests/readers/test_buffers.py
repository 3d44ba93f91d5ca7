"""The read-buffer pool reuses a buffer only when no tensor made from it is alive."""

from __future__ import annotations

import gc

import torch

from adamscope.readers import buffers


def test_buffers_are_reused_only_when_free() -> None:
    buffers.clear()
    n = (4 << 20) // 4  # 4 MB of float32: pooled
    a = buffers.empty(n, torch.float32)
    a.fill_(1.0)
    b = buffers.empty(n, torch.float32)  # a is alive: another buffer
    assert a.data_ptr() != b.data_ptr()
    b.fill_(2.0)
    view = a[10:20]  # a view keeps a's buffer busy after `a` goes
    ptr = a.data_ptr()
    del a
    gc.collect()
    c = buffers.empty(n, torch.float32)
    assert c.data_ptr() != ptr and c.data_ptr() != b.data_ptr()
    assert bool((view == 1.0).all())  # untouched
    del view, c
    gc.collect()
    d = buffers.empty(n // 2, torch.float32)  # a smaller read fits in a free buffer
    assert len(buffers._pool) == 3
    assert d.numel() == n // 2 and d.dtype == torch.float32
    assert bool((b == 2.0).all())


def test_small_reads_and_a_full_pool_fall_back_to_plain_tensors() -> None:
    buffers.clear()
    small = buffers.empty(1000, torch.bfloat16)
    assert small.numel() == 1000 and small.dtype == torch.bfloat16
    assert not buffers._pool
    held = [buffers.empty(1 << 18, torch.float32) for _ in range(buffers._MAX_BUFFERS)]
    extra = buffers.empty(1 << 18, torch.float32)  # every buffer is busy: a plain allocation
    assert len(buffers._pool) == buffers._MAX_BUFFERS
    assert all(extra.data_ptr() != h.data_ptr() for h in held)
    buffers.clear()
