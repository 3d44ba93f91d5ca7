"""Moments that are not floating point (int64, bool, complex) are not Adam state: refused in one
line, not read as numbers."""

from __future__ import annotations

import pytest
import torch

import adamscope
from adamscope.errors import NotAdamError


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64, torch.uint8])
def test_non_float_moments_are_refused(tmp_path, dtype) -> None:
    p = torch.nn.Parameter(torch.randn(8, 8))
    opt = torch.optim.Adam([p])
    p.grad = torch.randn(8, 8)
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"].to(dtype)
    torch.save(sd, tmp_path / "opt.pt")
    with pytest.raises(NotAdamError, match="exp_avg is .*not a floating-point Adam moment"):
        adamscope.analyze(tmp_path / "opt.pt")
    with pytest.raises(NotAdamError, match="not a floating-point"):
        adamscope.inspect(tmp_path / "opt.pt").tensors  # noqa: B018


def test_float_moments_of_every_width_are_read(tmp_path) -> None:
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        p = torch.nn.Parameter(torch.randn(8, 8))
        opt = torch.optim.Adam([p])
        p.grad = torch.randn(8, 8)
        opt.step()
        sd = opt.state_dict()
        for k in ("exp_avg", "exp_avg_sq"):
            sd["state"][0][k] = sd["state"][0][k].to(dtype)
        torch.save(sd, tmp_path / "opt.pt")
        assert adamscope.analyze(tmp_path / "opt.pt").tensors["numel"][0] == 64
