"""What changed between two checkpoints, per layer, and which layers moved first in a run.

For a quantity X in (m, v, u, r, weight) and a layer G, the relative change from A to B is
    X_change = ||X_B - X_A||_2 / ||X_A||_2      (sums over every coordinate of the layer's tensors)
u and r use each checkpoint's own step and hyper-parameters (torch convention); weights come from
the model state_dict stored beside the optimizer state when the checkpoint holds one.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamscope.config import ReaderOptions, StatsConfig
from adamscope.errors import AdamscopeError
from adamscope.forensics.lockstep import (
    Side,
    aligned,
    in_blocks,
    model_weights,
    open_side,
    side_of,
    state_source,
    tensor_source,
)
from adamscope.tables.layers import assign_layers
from adamscope.tables.rows import stats_row
from adamscope.tables.schema import DIFF_QUANTITIES
from adamscope.vocab import TensorState

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger(__name__)

QUANTITIES = DIFF_QUANTITIES


@dataclass(frozen=True, kw_only=True)
class DiffOptions:
    """How `diff` and `moved_first` read checkpoints."""

    reader: ReaderOptions = field(default_factory=ReaderOptions)
    chunk_elems: int = 1 << 22
    weights: bool = True  # compare the model weights when the checkpoints hold them
    stages: bool = True  # diff(): each layer's stage in A and B (one more pass per checkpoint)
    stats: StatsConfig = field(default_factory=StatsConfig)  # for the stages


def _sums(ta: TensorState, tb: TensorState, wa: Any, wb: Any, chunk: int) -> dict[str, list[float]]:
    """{quantity: [sum (X_B - X_A)^2, sum X_A^2]} of one tensor (or piece)."""
    import torch

    from adamscope.stats.adam import coefficients, update_and_ratio

    ka = coefficients(ta.hp, ta.step, convention="torch", name=ta.name)
    kb = coefficients(tb.hp, tb.step, convention="torch", name=tb.name)
    sources = [state_source(ta, chunk), state_source(tb, chunk)]
    with_w = wa is not None and wb is not None
    if with_w:
        lo, hi = (tb.piece[0], tb.piece[1]) if tb.piece else (0, None)
        sources += [tensor_source(w, chunk, start=lo, stop=hi) for w in (wa, wb)]
    open_ended = frozenset({2, 3}) if with_w and tb.piece else frozenset()
    out: dict[str, list[float]] = {q: [0.0, 0.0] for q in QUANTITIES if q != "weight" or with_w}
    f32, f64 = torch.float32, torch.float64
    with torch.no_grad():
        for _, parts in in_blocks(aligned(sources, what=tb.name, open_ended=open_ended)):
            (ma, va, xa), (mb, vb, xb) = parts[0], parts[1]
            ua, ra = update_and_ratio(ma.to(f32), (va if xa is None else xa).to(f32), ka)
            ub, rb = update_and_ratio(mb.to(f32), (vb if xb is None else xb).to(f32), kb)
            pairs = {"m": (ma, mb), "v": (va, vb), "u": (ua, ub), "r": (ra, rb)}
            if with_w:
                pairs["weight"] = (parts[2][0], parts[3][0])
            for q, (xa_, xb_) in pairs.items():
                a64, b64 = xa_.to(f64), xb_.to(f64)
                ok = a64.isfinite() & b64.isfinite()
                a64, b64 = a64[ok], b64[ok]
                out[q][0] += float(((b64 - a64) ** 2).sum())
                out[q][1] += float((a64 * a64).sum())
    return out


def _rel(d2: float, a2: float) -> float:
    if a2 > 0:
        return math.sqrt(d2 / a2)
    return 0.0 if d2 == 0 else math.inf


def diff_sides(a: Side, b: Side, *, options: DiffOptions) -> pl.DataFrame:
    """Per-layer relative changes from opened checkpoint `a` to `b` (stage columns not filled)."""
    import polars as pl

    wa = model_weights(a) if options.weights else None
    wb = model_weights(b) if options.weights else None
    names = list(dict.fromkeys(ts.name for ts in b.states.values()))
    layer_of = assign_layers(names)
    acc: dict[str, dict[str, list[float]]] = defaultdict(dict)
    counts: dict[str, set[str]] = defaultdict(set)
    for key, tb in b.states.items():
        ta = a.states.get(key)
        if ta is None:
            log.warning("%s: '%s' has no optimizer state in %s; skipped", b.path, tb.name, a.path)
            continue
        w_a = wa.get(tb.name) if wa else None
        w_b = wb.get(tb.name) if wb else None
        sums = _sums(ta, tb, w_a, w_b, options.chunk_elems)
        layer = layer_of[tb.name].layer
        counts[layer].add(tb.name)
        for q, (d2, a2) in sums.items():
            cur = acc[layer].setdefault(q, [0.0, 0.0])
            cur[0] += d2
            cur[1] += a2
    if not acc:
        raise AdamscopeError(f"{b.path}: no tensor in common with {a.path}")
    depth = {lo.layer: lo.depth for lo in layer_of.values()}
    rows = []
    for layer in sorted(acc, key=lambda x: depth[x]):
        row: dict[str, Any] = {
            "checkpoint_a": str(a.path),
            "checkpoint_b": str(b.path),
            "step_a": a.step,
            "step_b": b.step,
            "layer": layer,
            "depth": depth[layer],
            "n_tensors": len(counts[layer]),
        }
        for q in QUANTITIES:
            s = acc[layer].get(q)
            row[f"{q}_change"] = _rel(*s) if s else None
        rows.append(row)
    return pl.DataFrame(rows, schema=_schema())


def _schema() -> dict[str, Any]:
    """diff.parquet's columns before the stage columns are added (tables/schema.py: DIFF)."""
    from adamscope.tables.io import polars_schema

    return {k: v for k, v in polars_schema("diff").items() if not k.startswith("stage")}


def layer_stages(side: Side, cfg: StatsConfig) -> dict[str, str | None]:
    """Each layer's stage (THEORY.md) in one checkpoint, through the statistics engine."""
    from adamscope.stats.engine import merge_layer, summarize

    per_tensor: dict[str, Any] = {}
    for ts in side.states.values():
        sk = summarize(ts, cfg)
        per_tensor[ts.name] = per_tensor[ts.name].merge(sk) if ts.name in per_tensor else sk
    layer_of = assign_layers(list(per_tensor))
    groups: dict[str, list[Any]] = defaultdict(list)
    for name, sk in per_tensor.items():
        groups[layer_of[name].layer].append(sk)
    return {
        layer: stats_row(merge_layer(sks, name=layer))["stage"] for layer, sks in groups.items()
    }


def diff(a: Path, b: Path, *, options: DiffOptions | None = None) -> pl.DataFrame:
    """How each layer changed from checkpoint `a` to checkpoint `b` (`adamscope diff A B`).

    Returns:
        One row per layer: checkpoint_a, checkpoint_b, step_a, step_b, layer, depth, n_tensors,
        m_change, v_change, u_change, r_change, weight_change (null without weights), stage_a,
        stage_b, stage_changed (null with options.stages = False).

    Raises:
        AdamscopeError: unreadable checkpoints or no tensor in common.
    """
    import polars as pl

    opts = options or DiffOptions()
    side_a, side_b = open_side(a, options=opts.reader), open_side(b, options=opts.reader)
    df = diff_sides(side_a, side_b, options=opts)
    if not opts.stages:
        return df.with_columns(
            stage_a=pl.lit(None, pl.Utf8),
            stage_b=pl.lit(None, pl.Utf8),
            stage_changed=pl.lit(None, pl.Boolean),
        )
    sa, sb = layer_stages(side_a, opts.stats), layer_stages(side_b, opts.stats)
    df = df.with_columns(
        stage_a=pl.col("layer").replace_strict(sa, default=None, return_dtype=pl.Utf8),
        stage_b=pl.col("layer").replace_strict(sb, default=None, return_dtype=pl.Utf8),
    )
    return df.with_columns(stage_changed=pl.col("stage_a").ne_missing(pl.col("stage_b")))


def layer_changes(run_dir: Path, *, options: DiffOptions | None = None) -> pl.DataFrame:
    """`diff` (without stages) of every neighbouring pair of checkpoints in a run folder."""
    import polars as pl

    from adamscope.pipeline.discovery import discover

    opts = options or DiffOptions()
    found = discover(Path(run_dir))
    if len(found) < 2:
        raise AdamscopeError(f"{run_dir}: needs at least two checkpoints, found {len(found)}")
    frames, prev = [], None
    for f in found:
        side = side_of(f.path, f.reader, options=opts.reader)
        if prev is not None:
            frames.append(diff_sides(prev, side, options=opts))
        prev = side
    return pl.concat(frames)


def moved_first(
    run: Path | pl.DataFrame,
    *,
    k: float = 3.0,
    quantity: str = "v",
    options: DiffOptions | None = None,
) -> pl.DataFrame:
    """Rank layers by when their change first jumped: "which layer moved first" around a spike.

    For each layer, the series of `<quantity>_change` over neighbouring pairs of checkpoints; the
    layer "moves" at the first pair whose change exceeds k times the layer's own median change.
    Layers are ranked by that pair (earliest first), then by change / median (largest first);
    layers that never move come last.

    Args:
        run: a run folder, or the output of `layer_changes`.
        k: the multiple of the layer's median change that counts as moving.
        quantity: m, v, u, r or weight.

    Returns:
        rank, layer, depth, first_step (step_b of that pair; null if never), first_change,
        median_change, ratio (first_change / median_change), max_change, max_step.
    """
    import polars as pl

    if quantity not in QUANTITIES:
        raise AdamscopeError(f"unknown quantity {quantity!r}: use one of {', '.join(QUANTITIES)}")
    changes = run if isinstance(run, pl.DataFrame) else layer_changes(run, options=options)
    col = f"{quantity}_change"
    if changes[col].null_count() == changes.height:
        raise AdamscopeError(f"{col}: no values (the checkpoints hold no model weights?)")
    n_pairs = changes["step_b"].n_unique()
    if n_pairs < 3:
        log.warning("moved_first: only %d pairs of checkpoints; medians are not robust", n_pairs)
    rows = []
    for (layer,), g in changes.sort("step_b").group_by(["layer"], maintain_order=True):
        steps, vals = g["step_b"].to_list(), g[col].to_list()
        finite = [x for x in vals if x is not None]
        med = _median(finite)
        first = next(
            (i for i, x in enumerate(vals) if x is not None and x > k * med and x > 0), None
        )
        imax = max(range(len(vals)), key=lambda i: -1.0 if vals[i] is None else vals[i])
        rows.append(
            {
                "layer": layer,
                "depth": int(g["depth"][0]),
                "first_index": first,
                "first_step": steps[first] if first is not None else None,
                "first_change": vals[first] if first is not None else None,
                "median_change": med,
                "ratio": (vals[first] / med if med > 0 else math.inf)
                if first is not None
                else None,
                "max_change": vals[imax],
                "max_step": steps[imax],
            }
        )
    from adamscope.tables.io import polars_schema

    schema = {"first_index": pl.Int64, **polars_schema("moved_first")}
    del schema["rank"]  # numbered below, once sorted
    df = pl.DataFrame(rows, schema=schema).sort(
        ["first_index", "ratio"], descending=[False, True], nulls_last=True
    )
    return df.with_row_index("rank", offset=1).drop("first_index")


def _median(xs: list[float]) -> float:
    if not xs:
        return math.nan
    s, h = sorted(xs), len(xs) // 2
    return float(s[h]) if len(s) % 2 else (s[h - 1] + s[h]) / 2
