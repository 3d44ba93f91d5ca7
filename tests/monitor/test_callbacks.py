"""HFCallback in a real transformers Trainer and LightningCallback in a real Lightning Trainer:
the rows written live at step N equal those analyze writes for the framework's own checkpoint
saved at step N of the same run."""

from __future__ import annotations

import polars as pl
import pytest
import torch

import adamscope

from ._train import assert_rows_equal, batches, loss_of, tiny_config


def test_hf_callback_equals_analyze_of_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from adamscope.monitor import HFCallback

    cfg = transformers.GPT2Config(
        vocab_size=64,
        n_positions=16,
        n_embd=32,
        n_layer=2,
        n_head=2,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    gen = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(0, 64, (16,), generator=gen)} for _ in range(64)]
    for d in data:
        d["labels"] = d["input_ids"]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=10,
        save_steps=10,
        logging_steps=1,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,  # the hook sees optimizer steps only
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    cb = HFCallback(tmp_path / "mon", every=5)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[cb])
    trainer.train()
    live = adamscope.load(tmp_path / "mon")
    post = adamscope.analyze(
        tmp_path / "run" / "checkpoint-10", dip_sample=live.manifest["options"]["dip_sample"]
    )
    assert live.steps() == [5, 10]
    assert_rows_equal(live.tensors.filter(pl.col("step") == 10), post.tensors, "tensor")
    assert_rows_equal(live.layers.filter(pl.col("step") == 10), post.layers, "layer")
    assert live.losses.height == 10 and live.losses["grad_norm"].is_not_null().all()
    assert live.tensors.filter(pl.col("step") == 10)["g_norm"].is_not_null().all()


def test_lightning_callback_equals_analyze_of_checkpoint(tmp_path):
    lp = pytest.importorskip("lightning.pytorch")
    from adamscope.monitor import LightningCallback
    from adamscope.sim import proxy

    cfg = tiny_config()
    xs = batches(20, cfg)

    class Module(lp.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.model = proxy.build_model(cfg)

        def training_step(self, batch, idx):
            return loss_of(self.model, batch)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.1)

    loader = torch.utils.data.DataLoader(xs, batch_size=None)
    ckpt = lp.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=10, save_top_k=-1, filename="{step}"
    )
    trainer = lp.Trainer(
        max_steps=10,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accumulate_grad_batches=2,
        callbacks=[LightningCallback(tmp_path / "mon", every=5), ckpt],
    )
    trainer.fit(Module(), loader)
    (path,) = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    live = adamscope.load(tmp_path / "mon")
    post = adamscope.analyze(path, dip_sample=live.manifest["options"]["dip_sample"])
    assert live.steps() == [5, 10]
    assert_rows_equal(live.tensors.filter(pl.col("step") == 10), post.tensors, "tensor")
    assert_rows_equal(live.layers.filter(pl.col("step") == 10), post.layers, "layer")
    assert live.losses.height == 20  # one loss per batch, two batches per optimizer step
