"""`HFCallback`: the monitor inside a transformers `Trainer` (imports transformers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from adamscope.errors import AdamscopeError
from adamscope.monitor.core import Monitor


class HFCallback(TrainerCallback):  # type: ignore[misc]
    """`Trainer(..., callbacks=[HFCallback(out="mon/", every=10)])`.

    At train begin it hooks the Trainer's optimizer (inside accelerate's wrapper), so it sees
    optimizer steps only: gradient accumulation and fp16 steps skipped on overflow are handled.
    Names come from the Trainer's model (the same names analyze gives its checkpoints). The
    logged loss, grad_norm and learning rate go to the losses table. Options: those of
    `adamscope.monitor.attach`.
    """

    def __init__(self, out: str | Path, *, every: int = 10, **options: Any) -> None:
        self.out, self.every, self.options = Path(out), every, options
        self.monitor: Monitor | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        optimizer, model = kw.get("optimizer"), kw.get("model")
        if optimizer is None:
            raise AdamscopeError("HFCallback: the Trainer passed no optimizer at train begin")
        if self.monitor is None:
            self.monitor = Monitor(
                optimizer, out=self.out, model=model, every=self.every, **self.options
            )

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any
    ) -> None:
        if self.monitor is not None and logs and "loss" in logs:
            self.monitor.log(
                state.global_step,
                logs["loss"],
                grad_norm=logs.get("grad_norm"),
                lr=logs.get("learning_rate"),
            )

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
