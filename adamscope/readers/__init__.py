"""Checkpoint readers: one module per family behind the `Reader` protocol (see base.py).

`open_checkpoint(path, options)` detects the family and returns its reader; `load_lazy` reads any
torch.save zip file with lazy tensors and without executing anything from it.
"""

from __future__ import annotations

from adamscope.config import ReaderOptions
from adamscope.readers.base import Reader
from adamscope.readers.registry import READERS, detect, open_checkpoint, register
from adamscope.readers.torchzip import LazyTensor, load_lazy
from adamscope.vocab import CheckpointInfo, HyperParams, TensorState

__all__ = [
    "READERS",
    "CheckpointInfo",
    "HyperParams",
    "LazyTensor",
    "Reader",
    "ReaderOptions",
    "TensorState",
    "detect",
    "load_lazy",
    "open_checkpoint",
    "register",
]
