"""The gradients tables: `pair_gradients` (tensor and layer rows of one pair of checkpoints),
gradients.parquet, and the per-layer exact gradient norms of a whole run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from adamscope.errors import AdamscopeError
from adamscope.forensics.lockstep import Side, open_side, side_of
from adamscope.forensics.recover import GradientOptions, Sums, iter_pair, stats_row
from adamscope.tables.layers import assign_layers

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairInfo:
    a: Path
    b: Path
    step_a: int | None
    step_b: int | None
    window: int
    exact: bool


def pair_gradients(
    a: Path, b: Path, *, options: GradientOptions | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per-tensor and per-layer gradients of the step that led from checkpoint `a` to `b`.

    Args:
        a: the earlier checkpoint (file or checkpoint folder).
        b: the later checkpoint; exact when its stored step is one more than `a`'s.
        options: GradientOptions.

    Returns:
        (tensors, layers) DataFrames with the columns of docs/gradients.md.

    Raises:
        AdamscopeError: unreadable checkpoints, `b` not later than `a`, or loss_gradient without
            weights.
    """
    opts = options or GradientOptions()
    return gradients_of(
        open_side(a, options=opts.reader), open_side(b, options=opts.reader), options=opts
    )


def gradients_of(
    a: Side, b: Side, *, options: GradientOptions
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`pair_gradients` for two opened checkpoints."""
    import polars as pl

    from adamscope.tables.io import polars_schema

    rows = list(iter_pair(a, b, options=options))
    if not rows:
        raise AdamscopeError(f"{b.path}: no tensor in common with {a.path}")
    info = _pair_info(a, b, rows, options)
    layer_of = assign_layers([ts.name for ts, *_ in rows])
    ident = {
        "checkpoint": str(info.b),
        "prev_checkpoint": str(info.a),
        "step": info.step_b,
        "prev_step": info.step_a,
    }
    tensors, layers = [], {}
    for ts, s, window, kind in rows:
        lo = layer_of[ts.name]
        exact = window == 1
        tensors.append(
            {
                **ident,
                "window": window,
                "exact": exact,
                "tensor": ts.name,
                "layer": lo.layer,
                "depth": lo.depth,
                "grad_kind": kind,
                **stats_row(s, exact=exact, options=options),
            }
        )
        acc = layers.setdefault(
            lo.layer,
            {
                "depth": lo.depth,
                "sums": Sums(),
                "n": 0,
                "window": window,
                "exact": exact,
                "kinds": set(),
            },
        )
        acc["sums"].add(s)
        acc["n"] += 1
        acc["window"] = max(acc["window"], window)
        acc["exact"] = acc["exact"] and exact
        acc["kinds"].add(kind)
    layer_rows = [
        {
            **ident,
            "window": acc["window"],
            "exact": acc["exact"],
            "layer": layer,
            "depth": acc["depth"],
            "n_tensors": acc["n"],
            "grad_kind": next(iter(acc["kinds"])) if len(acc["kinds"]) == 1 else "mixed",
            **stats_row(acc["sums"], exact=acc["exact"], options=options),
        }
        for layer, acc in sorted(layers.items(), key=lambda kv: kv[1]["depth"])
    ]
    return (
        pl.DataFrame(tensors, schema=polars_schema("gradient_tensors")),
        pl.DataFrame(layer_rows, schema=polars_schema("gradient_layers")),
    )


def _pair_info(a: Side, b: Side, rows: list, options: GradientOptions) -> PairInfo:
    windows = {w for _, _, w, _ in rows}
    window = max(windows)
    if window != 1:
        log.warning(
            "%s -> %s: steps %s -> %s are %d apart; exact gradients need consecutive checkpoints, "
            "reporting window estimates (exact = false)",
            a.path,
            b.path,
            a.step,
            b.step,
            window,
        )
    return PairInfo(a.path, b.path, a.step, b.step, window, window == 1)


def write_gradients(a: Path, b: Path, out: Path, *, options: GradientOptions | None = None) -> Path:
    """Write `out`/gradients.parquet: the tensor rows and the layer rows of `pair_gradients`,
    told apart by `level` ('tensor' | 'layer'; `tensor` is null on layer rows). Returns the path."""
    import polars as pl

    from adamscope.tables.io import write_parquet
    from adamscope.tables.schema import names

    tensors, layers = pair_gradients(a, b, options=options)
    df = pl.concat(
        [
            tensors.with_columns(level=pl.lit("tensor")),
            layers.with_columns(level=pl.lit("layer")),
        ],
        how="diagonal_relaxed",
    ).select(names("gradients"))
    path = Path(out) / "gradients.parquet"
    write_parquet(df, path)
    return path


def exact_layer_grad_norms(
    run_dir: Path, *, options: GradientOptions | None = None
) -> pl.DataFrame:
    """Per-layer exact gradient norms of every consecutive pair of checkpoints in `run_dir`.

    Pairs whose stored steps are not one apart are skipped (logged); pairs that fail the
    consistency check are kept with `consistent` = false and a warning.

    Returns:
        DataFrame(step, layer, depth, grad_norm, consistent), one row per layer and later step.
    """
    import polars as pl

    from adamscope.pipeline.discovery import discover

    opts = options or GradientOptions()
    found = discover(Path(run_dir))
    frames = []
    prev: Side | None = None
    for f in found:
        side = side_of(f.path, f.reader, options=opts.reader)
        if prev is not None and prev.step is not None and side.step == prev.step + 1:
            _, layers = gradients_of(prev, side, options=opts)
            if not layers["consistent"].all():
                bad = layers.filter(~pl.col("consistent"))["layer"].to_list()
                log.warning(
                    "%s -> %s: fails the consistency check in %s", prev.path, side.path, bad
                )
            frames.append(layers.select("step", "layer", "depth", "grad_norm", "consistent"))
        elif prev is not None:
            log.info(
                "%s -> %s: steps %s -> %s are not consecutive; skipped",
                prev.path,
                side.path,
                prev.step,
                side.step,
            )
        prev = side
    schema = {
        "step": pl.Int64,
        "layer": pl.Utf8,
        "depth": pl.Int64,
        "grad_norm": pl.Float64,
        "consistent": pl.Boolean,
    }
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)
