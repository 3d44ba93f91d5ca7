"""LazyTensor reads against torch.load(weights_only=True) of the same file (the reference reader):
every layout (contiguous, permuted, sliced, offset, 0-d, empty, tied, bf16/fp16/fp8), every chunk
size, files left untouched, and memory bounded by the chunk on a ~200 MB tensor.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from adamscope.readers.torchzip import LazyTensor, load_lazy


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, 4, generator=g)
    tensors = {
        "contiguous": base,
        "permuted": base.permute(2, 0, 1),  # dense, non-contiguous
        "transposed": torch.randn(9, 13, generator=g).t(),
        "sliced": base[1:5, ::2, 1],  # gaps and an offset
        "offset_view": base.reshape(-1)[17:47],  # contiguous with a storage offset
        "expanded": torch.randn(3, 1, generator=g).expand(3, 4),  # stride 0
        "scalar": torch.tensor(7.0),
        "empty": torch.empty(0, 3),
        "bf16": torch.randn(33, generator=g).bfloat16(),
        "fp16": torch.randn(5, 7, generator=g).half(),
        "fp8": torch.randn(10, generator=g).to(torch.float8_e4m3fn),
        "int64": torch.arange(11),
    }
    tensors["tied"] = tensors["contiguous"]
    path = tmp_path_factory.mktemp("tz") / "tensors.pt"
    torch.save(tensors, path)
    return path


def _flat(t: torch.Tensor) -> torch.Tensor:
    flat = t.reshape(-1)
    return flat.view(torch.uint8) if flat.dtype == torch.float8_e4m3fn else flat


def test_every_layout_reads_like_torch_load(saved: Path) -> None:
    ref = torch.load(saved, weights_only=True)
    lazy = load_lazy(saved)
    assert set(lazy) == set(ref)
    for name, want in ref.items():
        t = lazy[name]
        assert isinstance(t, LazyTensor)
        assert t.shape == tuple(want.shape) and t.numel == want.numel() and t.dtype == want.dtype
        assert torch.equal(_flat(t.materialize()), _flat(want)), name
        assert t.is_contiguous == want.is_contiguous(), name


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 10_000])
def test_chunked_reads_reassemble_exactly(saved: Path, chunk: int) -> None:
    ref = torch.load(saved, weights_only=True)
    lazy = load_lazy(saved)
    for name, want in ref.items():
        t = lazy[name]
        parts = [t.read(a, min(a + chunk, t.numel)) for a in range(0, t.numel, chunk)]
        got = torch.cat(parts) if parts else t.read(0, 0)
        assert torch.equal(_flat(got), _flat(want)), (name, chunk)


def test_read_clips_to_the_tensor(saved: Path) -> None:
    t = load_lazy(saved)["int64"]
    assert t.read(8, 100).tolist() == [8, 9, 10]
    assert t.read(20, 30).numel() == 0


def test_tied_tensors_share_one_storage(saved: Path) -> None:
    lazy = load_lazy(saved)
    assert lazy["tied"].storage_key == lazy["contiguous"].storage_key
    assert lazy["permuted"].storage_key == lazy["contiguous"].storage_key  # a view of it
    assert lazy["bf16"].storage_key != lazy["contiguous"].storage_key


def test_files_are_read_only_and_unchanged(saved: Path) -> None:
    before = (saved.stat().st_mtime_ns, hashlib.sha256(saved.read_bytes()).hexdigest())
    saved.chmod(0o444)
    try:
        lazy = load_lazy(saved)
        for t in lazy.values():
            t.read(0, t.numel)
    finally:
        saved.chmod(0o644)
    assert (saved.stat().st_mtime_ns, hashlib.sha256(saved.read_bytes()).hexdigest()) == before


_WRITE = """
import sys, torch
torch.save({"exp_avg": torch.linspace(-1, 1, 52_428_800)}, sys.argv[1])  # 200 MiB of float32
"""

_READ = """
import json, resource, sys, time
import torch
from adamscope.readers.torchzip import load_lazy
t = load_lazy(sys.argv[1])["exp_avg"]
chunk = 1 << 20  # 4 MiB of float32
t.read(0, chunk)  # warm up allocator and imports
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
total, first, last = 0.0, None, None
for a in range(0, t.numel, chunk):
    x = t.read(a, a + chunk)
    total += float(x.double().sum())
    first = x[0].item() if first is None else first
    last = x[-1].item()
elapsed = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_kb": after - before, "seconds": elapsed, "first": first, "last": last,
                  "total": total, "numel": t.numel}))
"""


def test_streaming_a_200mb_tensor_keeps_memory_bounded(tmp_path: Path) -> None:
    path = tmp_path / "big.pt"
    subprocess.run([sys.executable, "-c", textwrap.dedent(_WRITE), str(path)], check=True)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_READ), str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout)
    assert result["numel"] == 52_428_800
    assert result["first"] == -1.0 and result["last"] == 1.0
    assert abs(result["total"]) < 1.0  # linspace(-1, 1) sums to ~0: every chunk was read
    # ru_maxrss is in KiB on Linux: growth must stay a few chunks (4 MiB each), not 200 MiB
    assert result["growth_kb"] < 32 * 1024, result
    assert result["seconds"] < 20, result  # ~0.8 s on an idle 2-core machine


def _adam_state() -> tuple[dict, torch.Tensor]:
    p = torch.nn.Parameter(torch.randn(16, 8, generator=torch.Generator().manual_seed(3)))
    opt = torch.optim.AdamW([p], lr=1e-3)
    p.grad = torch.randn(16, 8, generator=torch.Generator().manual_seed(4))
    opt.step()
    return opt.state_dict(), opt.state[p]["exp_avg"].clone()


def test_a_file_saved_without_crc32_reads_like_one_with(tmp_path: Path) -> None:
    """torch.save with `compute_crc32=False` (a speed option of torch's serialization config)
    writes CRC 0 for every member; it was refused as a bad CRC-32. Its tensors read exactly."""
    from torch.utils.serialization import config

    sd, exp_avg = _adam_state()
    before = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        torch.save(sd, tmp_path / "nocrc.pt")
    finally:
        config.save.compute_crc32 = before
    import zipfile

    assert {i.CRC for i in zipfile.ZipFile(tmp_path / "nocrc.pt").infolist()} == {0}
    tree = load_lazy(tmp_path / "nocrc.pt")
    m = tree["state"][0]["exp_avg"]
    assert torch.equal(m.read(0, m.numel).reshape(m.shape), exp_avg)


def test_a_data_pkl_whose_crc32_fails_is_refused(tmp_path: Path) -> None:
    """One byte of a float inside data.pkl changed: the pickle still loads, with another lr.
    The member's CRC-32 (torch computes it by default) tells, and the file is refused."""
    import zipfile

    from adamscope.errors import CorruptCheckpointError

    sd, _ = _adam_state()
    path = tmp_path / "opt.pt"
    torch.save(sd, path)
    info = next(i for i in zipfile.ZipFile(path).infolist() if i.filename.endswith("data.pkl"))
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    pkl = raw[start : start + info.file_size]
    at = pkl.index(b"G")  # the first BINFLOAT: its last mantissa byte
    raw[start + at + 8] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError, match="Bad CRC-32"):
        load_lazy(path)
