"""`adamscope.monitor`: analyze's tables written live from inside training, every N optimizer steps.

    mon = adamscope.monitor.attach(optimizer, model=model, out="mon/", every=10)
    ...train...
    mon.close()
    t = adamscope.load("mon/")        # the same Tables as analyze gives, plus the live columns

or `HFCallback(out=..., every=...)` in a transformers Trainer's callbacks, or
`LightningCallback(...)` in a Lightning Trainer's. docs/monitor.md has the details.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["attach", "Monitor", "HFCallback", "LightningCallback"]

if TYPE_CHECKING:
    from adamscope.monitor.core import Monitor, attach  # noqa: F401
    from adamscope.monitor.hf import HFCallback  # noqa: F401
    from adamscope.monitor.lightning import LightningCallback  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in ("attach", "Monitor"):
        from adamscope.monitor import core

        return getattr(core, name)
    if name == "HFCallback":  # imports transformers
        from adamscope.monitor import hf

        return hf.HFCallback
    if name == "LightningCallback":  # imports lightning (or pytorch_lightning)
        from adamscope.monitor import lightning

        return lightning.LightningCallback
    raise AttributeError(f"module 'adamscope.monitor' has no attribute {name!r}")
