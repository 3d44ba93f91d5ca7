"""repair of a Hugging Face Trainer `checkpoint-N/` written by the real Trainer (tiny GPT-2):
optimizer.pt differs only in the reset tensors and eps, every other file is copied byte for byte,
and `Trainer.train(resume_from_checkpoint=...)` of the repaired folder runs one more step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import adamscope
from adamscope.repair import repair

from ._make import differences

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")


def _trainer(folder: Path, max_steps: int) -> transformers.Trainer:
    cfg = transformers.GPT2Config(
        vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    gen = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(0, 64, (16,), generator=gen)} for _ in range(32)]
    for d in data:
        d["labels"] = d["input_ids"]
    args = transformers.TrainingArguments(
        output_dir=str(folder), max_steps=max_steps, save_steps=4, per_device_train_batch_size=4,
        learning_rate=1e-3, report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
    )  # fmt: skip
    return transformers.Trainer(model=model, args=args, train_dataset=data)


def test_trainer_checkpoint_resumes_after_repair(tmp_path: Path) -> None:
    _trainer(tmp_path / "run", 4).train()
    src = tmp_path / "run" / "checkpoint-4"
    plan = repair(src, tmp_path / "out", reset_layers="block.0", eps=1e-10)
    out = tmp_path / "out" / "checkpoint-4"
    assert (
        plan.format == "hf-trainer" and plan.step == 4 and plan.files_changed == ("optimizer.pt",)
    )
    names = {r.tensor for r in plan.resets}
    assert names and all(n.startswith("transformer.h.0.") for n in names)
    files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for f in files:
        if f.name != "optimizer.pt":
            assert (src / f).read_bytes() == (out / f).read_bytes(), f
    a = torch.load(src / "optimizer.pt", weights_only=True)
    b = torch.load(out / "optimizer.pt", weights_only=True)
    diff = differences(a, b)
    eps_keys = {f"param_groups/{g}/eps" for g in range(len(a["param_groups"]))}
    assert eps_keys <= diff and len(diff - eps_keys) == 2 * len(names)
    for key in diff - eps_keys:
        _, pid, state = key.split("/")
        assert not b["state"][int(pid)][state].any()
    after = adamscope.analyze(out, gradients=False).layers
    m = dict(zip(after["layer"], after["m_norm"], strict=True))
    assert m["block.0"] == 0 and all(v > 0 for k, v in m.items() if k != "block.0")

    trainer = _trainer(tmp_path / "resumed", 5)
    trainer.train(resume_from_checkpoint=str(out))
    assert trainer.state.global_step == 5
    assert {g["eps"] for g in trainer.optimizer.param_groups} == {1e-10}
