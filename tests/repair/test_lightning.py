"""repair of a Lightning `.ckpt` written by a real Lightning Trainer (proxy GPT, AdamW over
self.parameters(): no param_names, names recovered from state_dict): the repaired file resumes
with `Trainer.fit(ckpt_path=...)` for one more step; only the reset tensors and eps differ."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adamscope.repair import repair
from adamscope.sim import proxy

from ._make import CFG, batch, differences, loss_of

lp = pytest.importorskip("lightning.pytorch")


class _Module(lp.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = proxy.build_model(CFG)

    def training_step(self, x: torch.Tensor, idx: int) -> torch.Tensor:
        return loss_of(self.model, x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.1)


def _trainer(max_steps: int, folder: Path | None = None) -> lp.Trainer:
    callbacks = []
    if folder is not None:
        callbacks.append(
            lp.callbacks.ModelCheckpoint(
                dirpath=folder, every_n_train_steps=max_steps, save_top_k=-1, filename="{step}"
            )
        )
    return lp.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=folder is not None,
        callbacks=callbacks,
    )


def _loader() -> torch.utils.data.DataLoader:
    gen = torch.Generator().manual_seed(1)
    return torch.utils.data.DataLoader([batch(gen) for _ in range(20)], batch_size=None)


def test_lightning_ckpt_resumes_after_repair(tmp_path: Path) -> None:
    _trainer(6, tmp_path / "ckpt").fit(_Module(), _loader())
    (src,) = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    plan = repair(src, tmp_path / "out", reset_layers="embedding", eps=1e-9)
    assert plan.format == "lightning" and {r.layer for r in plan.resets} == {"embedding"}
    want = {"model.transformer.wte.weight", "model.transformer.wpe.weight"}
    assert {r.tensor for r in plan.resets} == want
    out = tmp_path / "out" / src.name
    a = torch.load(src, weights_only=True)  # what Lightning's own loader accepts, both load
    b = torch.load(out, weights_only=True)
    diff = differences(a, b)
    assert "optimizer_states/0/param_groups/0/eps" in diff
    moments = diff - {"optimizer_states/0/param_groups/0/eps"}
    assert len(moments) == 2 * len(plan.resets)
    for key in moments:
        _, k, _, pid, state = key.split("/")
        assert state in ("exp_avg", "exp_avg_sq")
        assert not b["optimizer_states"][int(k)]["state"][int(pid)][state].any()
    trainer = _trainer(7)
    module = _Module()
    trainer.fit(module, _loader(), ckpt_path=out)
    assert trainer.global_step == 7
    assert trainer.optimizers[0].param_groups[0]["eps"] == 1e-9
