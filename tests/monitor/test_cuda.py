"""The monitor on a GPU (skipped without CUDA): the copy and the inline paths reduce on the
device and give the rows analyze gives on CPU for a checkpoint saved at the same step."""

from __future__ import annotations

import polars as pl
import pytest
import torch

import adamscope
from adamscope.monitor import attach
from adamscope.sim import proxy

from ._train import assert_rows_equal, batches, loss_of, save_nanogpt, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_cuda_copy_and_inline_equal_analyze_on_cpu(tmp_path):
    cfg = tiny_config()
    model = proxy.build_model(cfg).cuda()
    opt = proxy.build_optimizer(model, cfg)
    a = attach(opt, model=model, out=tmp_path / "copy", every=5, snapshot="copy", dip_sample=1024)
    b = attach(
        opt, model=model, out=tmp_path / "inline", every=5, snapshot="inline", dip_sample=1024
    )
    for i, x in enumerate(batches(10, cfg), start=1):
        loss_of(model, x.cuda()).backward()
        opt.step()
        if i == 10:
            save_nanogpt(tmp_path / "ckpt" / "ckpt.pt", model, opt, cfg, 10)
        opt.zero_grad()
    a.close()
    b.close()
    post = adamscope.analyze(tmp_path / "ckpt" / "ckpt.pt", device="cpu", dip_sample=1024)
    for out in ("copy", "inline"):
        live = adamscope.load(tmp_path / out)
        assert live.steps() == [5, 10]
        for table, key in (("tensors", "tensor"), ("layers", "layer")):
            got = getattr(live, table).filter(pl.col("step") == 10)
            assert_rows_equal(got, getattr(post, table), key, rtol=1e-5)
