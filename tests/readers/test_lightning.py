"""Lightning .ckpt files from a real lightning.Trainer run (fixtures/make_lightning.py).

References: fixtures/lightning/truth.json from the live optimizer in on_save_checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _truth_helpers import FIXTURES, assert_matches, load_truth

from adamscope.config import ReaderOptions
from adamscope.errors import NamingError, NotAdamError
from adamscope.readers.lightning import LightningReader

FAMILY = FIXTURES / "lightning"
TRUTH = load_truth("lightning")


def test_every_n_train_steps_wrote_several_checkpoints() -> None:
    assert sorted(TRUTH) == ["epoch=0-step=3.ckpt", "epoch=0-step=6.ckpt", "epoch=0-step=9.ckpt"]


@pytest.mark.parametrize("ckpt", sorted(TRUTH))
def test_names_and_values_match_the_live_optimizer(ckpt: str) -> None:
    expected = TRUTH[ckpt]["tensors"]
    reader = LightningReader(FAMILY / ckpt, options=ReaderOptions())
    states = list(reader.iter_tensors())
    assert [ts.name for ts in states] == list(expected)  # `scale` (a buffer) is skipped
    for ts in states:
        assert_matches(ts, expected[ts.name], chunk=11)
    info = reader.describe()
    assert info.step == TRUTH[ckpt]["step"] and info.n_tensors == len(expected)


def _lightning_like(path: Path, state_dict: dict, opt: torch.optim.Optimizer) -> Path:
    torch.save(
        {
            "epoch": 0,
            "global_step": 1,
            "state_dict": state_dict,
            "optimizer_states": [opt.state_dict()],
            "lr_schedulers": [],
        },
        path,
    )
    return path


def test_ambiguous_alignment_raises_instead_of_mislabelling(tmp_path: Path) -> None:
    a, b = torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(4))
    opt = torch.optim.Adam([a, b])
    (a.sum() + 2 * b.sum()).backward()
    opt.step()
    # a float buffer with the same shape sits between the two parameters: 3 placements fit
    sd = {"a": a.detach(), "buf": torch.zeros(4), "b": b.detach()}
    path = _lightning_like(tmp_path / "amb.ckpt", sd, opt)
    with pytest.raises(NamingError, match="ambiguous"):
        list(LightningReader(path, options=ReaderOptions()).iter_tensors())


def test_sgd_only_checkpoint_is_not_adam(tmp_path: Path) -> None:
    w = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    w.sum().backward()
    opt.step()
    path = _lightning_like(tmp_path / "sgd.ckpt", {"w": w.detach()}, opt)
    with pytest.raises(NotAdamError, match="momentum_buffer"):
        list(LightningReader(path, options=ReaderOptions()).iter_tensors())
