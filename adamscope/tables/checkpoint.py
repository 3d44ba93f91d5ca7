"""One checkpoint's tables, built while its tensors stream by, in memory bounded by layers, not tensors.

Each tensor's sketch (with its dip sample) lives only until the tensor is complete: then its row and
histogram bins are taken and it is folded into its layer's running sketch, whose dip sample stays at
`dip_sample` points (numel-weighted, see stats.sketch.combine_layer). So peak memory grows with the
number of layers, never with the number or size of tensors.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import polars as pl

from adamscope.errors import AdamscopeError
from adamscope.tables import io
from adamscope.tables.rows import RowLater

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorMeta:
    """What the tables need of a TensorState besides its sketch (picklable, unlike the reader)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    step: float
    hp: Any
    piece: tuple[int, int] | None
    v_dtype: str | None = None  # None: exp_avg_sq is stored as `dtype`


_HIST_SCHEMA = {"quantity": pl.Utf8, "lo": pl.Float64, "hi": pl.Float64, "count": pl.Int64}


def _bins(sk: Any) -> pl.DataFrame:
    return pl.DataFrame(sk.histogram_columns(), schema=_HIST_SCHEMA)


class CheckpointTables:
    """Accumulates one checkpoint: `add(meta, sketch)` per tensor (or piece), then `frames()`."""

    def __init__(self, *, rel: str, path: Any, tensor_histograms: bool) -> None:
        self.rel = rel
        self.path = path
        self.tensor_histograms = tensor_histograms
        self.rows: list[dict[str, Any]] = []
        # (row, its statistics still waiting on the dip threads, live columns or None)
        self.later: list[tuple[dict[str, Any], RowLater, dict[str, Any] | None]] = []
        self.bins: list[tuple[str, pl.DataFrame]] = []  # (tensor name, its non-empty bins)
        self.pending: dict[str, tuple[TensorMeta, Any, int, Any]] = {}  # pieces still arriving
        # key -> (running sketch, n_tensors, running live sketch or None)
        self.layers: dict[tuple, tuple[Any, int, Any]] = {}
        self.layer_of: dict[str, tuple] = {}
        self.steps: Counter[int] = Counter()
        self._pool: Any = None
        self._queued: deque[Any] = deque()

    def add_later(self, meta: TensorMeta, sk: Any, *, depth: int = 2) -> None:
        """`add` on a background thread, in call order, so the caller can summarise the next tensor
        meanwhile (the dips and layer merges of this one overlap its reading and reduction). At most
        `depth` tensors wait; an error of `add` is raised by a later `add_later`, `drain` or `frames`.
        """
        from concurrent.futures import ThreadPoolExecutor

        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="adamscope-tables")
        while len(self._queued) >= depth:
            self._queued.popleft().result()
        self._queued.append(self._pool.submit(self.add, meta, sk))

    def drain(self) -> None:
        """Wait for every `add_later`; re-raise the first error."""
        try:
            while self._queued:
                self._queued.popleft().result()
        finally:
            if self._pool is not None and not self._queued:
                self._pool.shutdown()
                self._pool = None

    def close(self) -> None:
        """Drop what is still queued (after an error) and stop the thread."""
        for f in self._queued:
            f.cancel()
        self._queued.clear()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def add(self, meta: TensorMeta, sk: Any, live: Any = None) -> None:
        """One tensor's (or piece's) sketch; `live`: its monitor.live.LiveSketch (live runs)."""
        if meta.piece is None:
            self._finish(meta, sk, live)
            return
        first, merged, seen, mlive = self.pending.pop(meta.name, (meta, None, 0, None))
        merged = sk if merged is None else merged.merge(sk)
        mlive = live if mlive is None else mlive if live is None else mlive.merge(live)
        seen += sk.numel
        if seen >= meta.piece[1]:
            self._finish(first, merged, mlive)
        else:
            self.pending[meta.name] = (first, merged, seen, mlive)

    def _finish(self, meta: TensorMeta, sk: Any, live: Any = None) -> None:
        from adamscope.stats.engine import merge_layer
        from adamscope.tables.layers import layer_key

        if meta.name in self.layer_of:
            raise AdamscopeError(
                f"{self.path}: tensor '{meta.name}' appears twice in the optimizer state"
            )
        step = int(round(meta.step))
        self.steps[step] += 1
        row = {
            "step": step,
            "tensor": meta.name,
            "shape": str(list(meta.shape)),
            "dtype": meta.dtype,
            "v_dtype": meta.v_dtype or meta.dtype,
            "beta1": meta.hp.beta1,
            "beta2": meta.hp.beta2,
            "eps": meta.hp.eps,
            "lr": meta.hp.lr,
            "weight_decay": meta.hp.weight_decay,
        }
        self.rows.append(row)
        self.later.append((row, RowLater(sk), live.columns() if live is not None else None))
        if self.tensor_histograms:
            self.bins.append((meta.name, _bins(sk)))
        key = layer_key(meta.name)
        self.layer_of[meta.name] = key
        running, n, rlive = self.layers.get(key, (None, 0, None))
        label = "/".join(str(k) for k in key)
        parts = [sk] if running is None else [running, sk]
        rlive = live if rlive is None else rlive if live is None else rlive.merge(live)
        self.layers[key] = (merge_layer(parts, name=label), n + 1, rlive)

    def frames(self) -> dict[str, pl.DataFrame]:
        from adamscope.tables.layers import assign_layers

        self.drain()

        for name, (meta, sk, seen, live) in list(self.pending.items()):
            log.warning(
                "%s: '%s': pieces cover %d of %d elements", self.path, name, seen, meta.piece[1]
            )
            self._finish(meta, sk, live)
        self.pending.clear()
        # every layer's dips start now, next to the tensors' still running (started by `_finish`)
        layers = [(key, sk, RowLater(sk), n, live) for key, (sk, n, live) in self.layers.items()]
        for row, stats, live_cols in self.later:
            row.update(stats.result())
            row.update(live_cols or {})
        self.later.clear()
        if not self.rows:
            raise AdamscopeError(f"{self.path}: the optimizer state holds no parameter tensors")
        step = self.steps.most_common(1)[0][0]
        names = [r["tensor"] for r in self.rows]
        assigned = assign_layers(names)
        label = {self.layer_of[n]: (assigned[n].layer, assigned[n].depth) for n in names}
        ident = {"checkpoint": self.rel}
        for r in self.rows:
            r.update(ident, layer=assigned[r["tensor"]].layer, depth=assigned[r["tensor"]].depth)
        l_rows, hist = [], []
        for key, sk, stats, n, live in layers:
            layer, depth = label[key]
            l_rows.append(
                {
                    **ident,
                    "step": step,
                    "layer": layer,
                    "depth": depth,
                    "n_tensors": n,
                    **stats.result(),
                    **(live.columns() if live is not None else {}),
                }
            )
            hist.append(
                _bins(sk).with_columns(
                    level=pl.lit("layer"), tensor=pl.lit(None, pl.Utf8), layer=pl.lit(layer)
                )
            )
        l_rows.sort(key=lambda r: r["depth"])
        for name, b in self.bins:
            hist.append(
                b.with_columns(
                    level=pl.lit("tensor"), tensor=pl.lit(name), layer=pl.lit(assigned[name].layer)
                )
            )
        histograms = io.frame("histograms", [])
        if hist:
            h = pl.concat(hist, how="vertical").with_columns(
                checkpoint=pl.lit(self.rel), step=pl.lit(step, pl.Int64)
            )
            histograms = h.select(histograms.columns).cast(dict(histograms.schema))
        return {
            "tensors": io.frame("tensors", self.rows),
            "layers": io.frame("layers", l_rows),
            "histograms": histograms,
        }
