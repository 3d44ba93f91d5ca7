"""Small files that claim huge work: a flat DeepSpeed exp_avg of 4 bytes with stride 0 claiming 2^36
elements (streamed for hours), overlapping strides, a rank index of 10**12 in a rank file's name, and
a safetensors header of 600k tensors (parsed once, not once per tensor). Each is refused, or read,
within seconds and bounded memory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from _hostile_helpers import bounded, cli, error_lines

from adamscope.config import ReaderOptions
from adamscope.readers import guard, registry, safetensors_io

GROUP = {"lr": 0.1, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.0, "params": [0]}


def _deepspeed(root: Path, shapes: dict[str, tuple[int, ...]], m: torch.Tensor) -> Path:
    """A ZeRO-2 folder of one rank (torch.save of plain dicts) whose flat exp_avg/exp_avg_sq is m."""
    tag = root / "global_step1"
    tag.mkdir(parents=True)
    (root / "latest").write_text("global_step1")
    model = {"param_shapes": [shapes], "ds_config": {"zero_optimization": {"stage": 2}}}
    torch.save(model, tag / "mp_rank_00_model_states.pt")
    inner = {"state": {0: {"step": 1, "exp_avg": m, "exp_avg_sq": m}}, "param_groups": [GROUP]}
    outer = {"zero_stage": 2, "base_optimizer_state": inner}
    torch.save({"optimizer_state_dict": outer}, tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return root


OVERLAPPING = {
    "stride0": lambda: torch.zeros(1).expand(1 << 36),  # 4 bytes claiming 2^36 elements
    "overlapping": lambda: torch.zeros((1 << 20) + 1024).as_strided((1 << 20, 1024), (1, 1)),
}


@pytest.mark.parametrize("kind", sorted(OVERLAPPING))
def test_flat_deepspeed_state_with_overlapping_strides(kind: str, tmp_path: Path) -> None:
    m = OVERLAPPING[kind]()
    shape = tuple(m.shape)
    root = _deepspeed(tmp_path / "ds", {"w": shape}, m)
    assert (root / "global_step1" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").stat().st_size < (
        8 << 20
    )
    with bounded(20, megabytes=100):
        rc, err = cli("analyze", root, "-o", tmp_path / "out", "-q")
    assert rc == 2, err
    (line,) = error_lines(err)
    assert "overlapping strides" in line, line


def test_rank_index_of_10_to_the_12(tmp_path: Path) -> None:
    root = _deepspeed(tmp_path / "ds", {"w": (4,)}, torch.ones(4))
    tag = root / "global_step1"
    shutil.copyfile(
        tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        tag / f"zero_pp_rank_{10**12}_mp_rank_00_optim_states.pt",
    )
    with bounded(20, megabytes=50):
        rc, err = cli("analyze", root, "-o", tmp_path / "out", "-q")
    assert rc == 2, err
    (line,) = error_lines(err)
    assert "ranks [1, 2, 3, 4, 5] and 999999999994 more are missing" in line, line


def _mlx_file(path: Path, n: int) -> Path:
    """An MLX Adam state of n one-element parameters written header-first (no writer builds
    600k tensors fast): step, then <i>.m / <i>.v."""
    entries: dict[str, dict] = {"step": {"dtype": "U64", "shape": [], "data_offsets": [0, 8]}}
    pos = 8
    for i in range(n):
        for k in ("m", "v"):
            entries[f"p{i}.{k}"] = {"dtype": "F32", "shape": [1], "data_offsets": [pos, pos + 4]}
            pos += 4
    header = json.dumps(entries).encode()
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.write((3).to_bytes(8, "little"))
        f.write(torch.full((2 * n,), 0.5).numpy().tobytes())
    return path


def test_a_large_safetensors_header_is_parsed_once(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    path = _mlx_file(tmp_path / "opt.safetensors", 2_000)
    parses = []
    real = guard.parse_json
    monkeypatch.setattr(guard, "parse_json", lambda *a, **k: parses.append(1) or real(*a, **k))
    import safetensors

    opened = []
    real_open = safetensors.safe_open
    monkeypatch.setattr(
        safetensors, "safe_open", lambda *a, **k: opened.append(1) or real_open(*a, **k)
    )
    safetensors_io._header.cache_clear()
    with bounded(60):
        rc, err = cli("analyze", path, "-o", tmp_path / "out", "-q")
    assert rc == 0, err
    assert len(parses) == 1 and len(opened) == 1, (len(parses), len(opened))


def test_a_600k_tensor_safetensors_header_is_read_in_seconds(tmp_path: Path) -> None:
    path = _mlx_file(tmp_path / "opt.safetensors", 300_000)  # 600k tensors, a ~50 MB header
    safetensors_io._header.cache_clear()
    with bounded(60) as m:  # (tracemalloc would triple the time; the header is ~50 MB)
        reader_cls = registry.detect(path)
        reader = reader_cls(path, options=ReaderOptions())
        info = reader.describe()
    assert info.n_tensors == 300_000 and info.step == 3
    assert m["seconds"] < 60
