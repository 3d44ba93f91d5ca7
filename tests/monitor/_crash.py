"""Run by test_crash.py: a monitored run killed (SIGKILL) right after the flush of step 8 was
handed to the writer thread."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train import batches, loss_of, tiny_config  # noqa: E402

from adamscope.monitor import attach  # noqa: E402
from adamscope.sim import proxy  # noqa: E402

torch.set_num_threads(1)
cfg = tiny_config()
model = proxy.build_model(cfg)
opt = proxy.build_optimizer(model, cfg)
mon = attach(opt, model=model, out=sys.argv[1], every=2)
for i, x in enumerate(batches(12, cfg), start=1):
    loss_of(model, x).backward()
    opt.step()
    opt.zero_grad()
    if i == 6:
        mon.flush()  # 2, 4, 6 are on disk
    if i == 8:
        os.kill(os.getpid(), signal.SIGKILL)
