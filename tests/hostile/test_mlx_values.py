"""MLX optimizer files with values no real MLX run writes: a NaN or two-element step, integer or
negative moments. Each is one line naming the file, never numbers read as if they were Adam's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import adamscope
from adamscope.errors import AdamscopeError

SRC = Path(__file__).resolve().parents[2] / "fixtures" / "mlx" / "adam_fp32.safetensors"


def _variant(tmp_path: Path, **changes: torch.Tensor) -> Path:
    d = load_file(SRC)
    d.update(changes)
    out = tmp_path / "adam.safetensors"
    save_file(d, out)
    return out


@pytest.mark.parametrize(
    "step",
    [torch.tensor(float("nan")), torch.tensor([5, 6], dtype=torch.uint64), torch.tensor(-3.0)],
    ids=["nan", "two-elements", "negative"],
)
def test_a_step_no_run_writes_is_one_line(tmp_path: Path, step: torch.Tensor) -> None:
    path = _variant(tmp_path, step=step)
    with pytest.raises(AdamscopeError, match="step") as e:
        adamscope.analyze(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_integer_moments_are_not_adam_state(tmp_path: Path) -> None:
    d = load_file(SRC)
    path = _variant(tmp_path, **{"embed.weight.m": d["embed.weight.m"].to(torch.int32)})
    with pytest.raises(AdamscopeError, match="embed.weight") as e:
        adamscope.analyze(path)
    assert "\n" not in str(e.value)


def test_the_unchanged_file_reads(tmp_path: Path) -> None:
    assert adamscope.analyze(_variant(tmp_path)).tensors.height == 6


def test_negative_second_moments_are_corrupt(tmp_path: Path) -> None:
    d = load_file(SRC)
    path = _variant(tmp_path, **{"embed.weight.v": -d["embed.weight.v"]})
    with pytest.raises(AdamscopeError, match="'embed.weight' exp_avg_sq has negative entries"):
        adamscope.analyze(path)
