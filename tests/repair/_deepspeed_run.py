"""One rank of the DeepSpeed repair test (started by torchrun, 2 CPU ranks over gloo).

_deepspeed_run.py train STAGE DIR RESULT   3 AdamW steps, engine.save_checkpoint(DIR)
_deepspeed_run.py resume STAGE DIR RESULT  engine.load_checkpoint(DIR), record eps and which
                                           parameters have exp_avg == 0, one more step
"""

from __future__ import annotations

import json
import sys

import deepspeed
import torch
from deepspeed.utils import safe_get_full_optimizer_state


def _engine(stage: int):  # noqa: ANN202 - a DeepSpeed engine
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("fc1", torch.nn.Linear(8, 7))
    model.add_module("norm", torch.nn.LayerNorm(7))
    model.add_module("head", torch.nn.Linear(7, 3))
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "eps": 1e-8, "torch_adam": True}},
        "zero_optimization": {"stage": stage},
        "steps_per_print": 1000,
    }
    deepspeed.init_distributed(dist_backend="gloo")
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=config
    )
    return engine


def _step(engine, gen: torch.Generator) -> float:  # noqa: ANN001
    x, y = torch.randn(2, 8, generator=gen), torch.randn(2, 3, generator=gen)
    loss = ((engine(x) - y) ** 2).mean()
    engine.backward(loss)
    engine.step()
    return float(loss.detach())


def main() -> None:
    mode, stage, folder, result = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    engine = _engine(stage)
    rank = torch.distributed.get_rank()
    gen = torch.Generator().manual_seed(10 + rank)
    out: dict = {}
    if mode == "train":
        for _ in range(3):
            _step(engine, gen)
        engine.save_checkpoint(folder)
    else:
        engine.load_checkpoint(folder)
        opt = engine.optimizer
        if hasattr(opt, "_hp_optimizer_states_linked"):  # relink hp -> state views (0.19.8)
            opt._hp_optimizer_states_linked = False
            opt._lazy_init_hp_params_optimizer_state()
        zero = []
        for name, p in engine.module.named_parameters():
            m = safe_get_full_optimizer_state(p, "exp_avg")  # collective under ZeRO-3
            if not m.any():
                zero.append(name)
        out["eps"] = [g["eps"] for g in opt.optimizer.param_groups]
        out["zero"] = sorted(zero)
        loss = _step(engine, gen)
        out["steps"] = engine.global_steps
        out["finite"] = loss == loss and abs(loss) < float("inf")
    if rank == 0:
        with open(result, "w") as f:
            json.dump(out, f)
    torch.distributed.barrier()


if __name__ == "__main__":
    main()
