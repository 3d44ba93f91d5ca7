"""Which coordinates of a tensor go into its uniform sample (for Hartigan's dip)."""

from __future__ import annotations

import math

import numpy as np

from adamscope.stats.sketch import name_key


class Sampler:
    """Which global flat indices of a tensor are in its uniform sample.

    Every coordinate is kept independently with probability p = dip_sample / total (all of them when
    total <= dip_sample): the index space is cut into fixed cells, each cell draws the gaps between
    its kept coordinates (geometric) from a generator seeded by (seed, name, cell).
    The sample is therefore the same whatever the chunk size or the split into pieces, and pieces'
    samples merge by concatenation. `TensorSketch.dip_sample` trims the rare excess over dip_sample.
    """

    def __init__(self, name: str, total: int, k: int, seed: int) -> None:
        self.total = total
        self.all = total <= k
        self.p = min(1.0, k / max(total, 1))
        # few, large cells: each costs one generator set-up (~0.1 ms), the dominant host cost
        self.cell = max(1 << 22, -(-total // 64))
        self.key = name_key(name)
        self.seed = seed
        self._cached: tuple[int, np.ndarray] | None = None

    def _positions(self, c: int) -> np.ndarray:
        """Sorted global indices of cell c in the sample: a Bernoulli(p) process drawn as
        geometric gaps between kept coordinates, so the cost is that of the sample, not the cell."""
        if self._cached is not None and self._cached[0] == c:
            return self._cached[1]
        lo = c * self.cell
        size = min(self.cell, self.total - lo)
        rng = np.random.default_rng([self.seed, self.key, c])
        parts = []
        end = -1
        while True:
            expect = size * self.p
            gaps = rng.geometric(self.p, size=int(expect + 6.0 * math.sqrt(expect) + 16))
            pos = end + np.cumsum(gaps)
            parts.append(pos)
            end = int(pos[-1])
            if end >= size:
                break
        pos = np.concatenate(parts)
        pos = pos[: np.searchsorted(pos, size)] + lo
        self._cached = (c, pos)
        return pos

    def indices(self, g0: int, g1: int) -> np.ndarray:
        """Sorted global indices in [g0, g1) that belong to the sample."""
        if self.all:
            return np.arange(g0, g1, dtype=np.int64)
        parts = []
        for c in range(g0 // self.cell, (g1 - 1) // self.cell + 1):
            pos = self._positions(c)
            parts.append(pos[np.searchsorted(pos, g0) : np.searchsorted(pos, g1)])
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)
