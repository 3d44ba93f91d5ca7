"""A checkpoint's sketches do not pile up: memory grows with its layers, not with its tensors."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import torch

from adamscope.config import AnalyzeOptions
from adamscope.pipeline.discovery import discover
from adamscope.pipeline.run import analyze_checkpoint


def test_many_tensors_in_few_layers_keep_memory_small(tmp_path: Path) -> None:
    n, size = (
        300,
        20_000,
    )  # 300 tensors whose dip samples (whole tensors) would hold ~100 MB together
    names = [f"model.layers.{i % 2}.w{i}" for i in range(n)]
    params = [torch.nn.Parameter(torch.zeros(size)) for _ in names]
    opt = torch.optim.AdamW([{"params": params, "param_names": names}], lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(size, generator=gen)
    opt.step()
    path = tmp_path / "opt.pt"
    torch.save(opt.state_dict(), path)

    found = discover(path)[0]
    opts = AnalyzeOptions(out=tmp_path / "out", tensor_histograms=False)
    # once unmeasured: the null model's Monte Carlo for this step (~70 MB of numpy, once per
    # process and cached) would otherwise count when this test runs alone, not after others
    analyze_checkpoint(found, rel="opt.pt", options=opts)
    tracemalloc.start()
    try:
        frames = analyze_checkpoint(found, rel="opt.pt", options=opts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert frames is not None and frames["tensors"].height == n
    assert frames["layers"].height == 2
    assert frames["layers"]["dip_n"].to_list() == [65536, 65536]
    # numpy/python allocations (the samples are numpy): a few layer sketches, not 300 tensor sketches
    assert peak < 40e6, f"peak traced memory {peak / 1e6:.0f} MB"
