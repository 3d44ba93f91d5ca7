"""Forensics across checkpoints: exact gradients of consecutive pairs, per-layer diffs, moved-first.

The public surface (docs/gradients.md); its parts: lockstep.py (opening two checkpoints and
streaming matching tensors chunk by chunk together), recover.py (gradients from the EMAs),
gradient_tables.py (their rows and files), diff.py (relative per-layer changes and their ranking).
"""

from __future__ import annotations

from adamscope.forensics.diff import (
    QUANTITIES,
    DiffOptions,
    diff,
    layer_changes,
    layer_stages,
    moved_first,
)
from adamscope.forensics.gradient_tables import (
    exact_layer_grad_norms,
    pair_gradients,
    write_gradients,
)
from adamscope.forensics.recover import GradientOptions

__all__ = [
    "QUANTITIES",
    "DiffOptions",
    "GradientOptions",
    "diff",
    "exact_layer_grad_norms",
    "layer_changes",
    "layer_stages",
    "moved_first",
    "pair_gradients",
    "write_gradients",
]
