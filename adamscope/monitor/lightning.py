"""`LightningCallback`: the monitor inside a Lightning `Trainer` (imports lightning, else
pytorch_lightning)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    from lightning.pytorch import Callback
except ImportError:  # the standalone package
    from pytorch_lightning import Callback  # type: ignore[no-redef]

from adamscope.monitor.core import Monitor


class LightningCallback(Callback):  # type: ignore[misc]
    """`Trainer(..., callbacks=[LightningCallback(out="mon/", every=10)])`.

    At fit start it hooks the Trainer's first optimizer (torch Adam/AdamW), so it sees optimizer
    steps only (accumulate_grad_batches is handled); names are the LightningModule's
    named_parameters() (as in its checkpoints' state_dict). The training step's loss goes to the
    losses table. Options: those of `adamscope.monitor.attach`.
    """

    def __init__(self, out: str | Path, *, every: int = 10, **options: Any) -> None:
        self.out, self.every, self.options = Path(out), every, options
        self.monitor: Monitor | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is None and trainer.optimizers:
            self.monitor = Monitor(
                trainer.optimizers[0],
                out=self.out,
                model=pl_module,
                every=self.every,
                **self.options,
            )

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.monitor is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.monitor.log(trainer.global_step, loss)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
