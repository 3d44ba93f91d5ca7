"""Consecutive-checkpoint forensics: exact gradients, update-gradient alignment, what moved first.

The library surface (docs/gradients.md); the work is done in adamscope/forensics/.
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
