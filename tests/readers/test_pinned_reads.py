"""Reads for a GPU land in page-locked memory (one DMA per chunk, no staging copy); on CPU they come
from the pool as before. Without CUDA only the switch itself can be checked: inside
`pinned_reads()` every read asks torch for pinned memory, outside it never does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adamscope.readers import buffers


def test_pinned_reads_ask_torch_for_page_locked_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "x.bin"
    data = torch.arange(1 << 19, dtype=torch.float32)
    f.write_bytes(data.numpy().tobytes())
    asked: list[bool] = []
    real = torch.empty

    def spy(*args, pin_memory: bool = False, **kw):  # noqa: ANN002, ANN003, ANN202
        asked.append(pin_memory)
        return real(*args, **kw)  # CPU-only torch cannot pin: the request is what is checked

    monkeypatch.setattr(torch, "empty", spy)
    outside = buffers.pread(f, 0, data.numel(), torch.float32)
    small = buffers.pread(f, 0, 16, torch.float32)  # under the pool's size: a plain allocation
    assert True not in asked
    with buffers.pinned_reads():
        inside = buffers.pread(f, 4, data.numel() - 1, torch.float32)
    assert asked[-1] is True
    assert torch.equal(small, data[:16])
    assert torch.equal(outside, data) and torch.equal(inside, data[1:])
    assert buffers._pinned == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinned_reads_are_pinned_on_a_gpu_machine(tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(torch.ones(1 << 20).numpy().tobytes())
    with buffers.pinned_reads():
        t = buffers.pread(f, 0, 1 << 20, torch.float32)
    assert t.is_pinned() and t.pin_memory().data_ptr() == t.data_ptr()
