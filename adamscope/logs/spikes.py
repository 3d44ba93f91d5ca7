"""Loss-spike detection: a robust z-score against a trailing window, and the paper's t1, t2, t3.

The rule (docs/figures.md):
1. For each step i, the baseline is the last `window` losses before i that are not inside a spike
   (after a spike that ended flat, only losses after its end). z = (loss_i - median) / scale, with
   scale = max(1.4826 * MAD, rel_floor * |median|): a robust standard deviation that a flat log
   cannot drive to zero. At least `min_history` baseline points are needed.
2. A spike starts at the first i with z > `z_start`. Its baseline (median, scale) is frozen there;
   its peak is the highest loss before it ends.
3. It *recovers* at the first step after the peak whose loss is back within `z_end` scales of
   the frozen baseline median. If it never does, it *ended flat*: it ends at the first step after
   the peak within `z_end` scales (of the later log's own noise) of the level the loss settles at
   (the median of the last `window` losses of the log).
4. t3 = end of the first spike that ended flat; t2 = start of that spike, else of the highest-z
   spike; t1 = end of the last recovered spike that ends at or before t2, else of the first
   recovered spike after it. Any of them is None when the log has no such spike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl

from adamscope.errors import AdamscopeError

MAD_TO_STD = 1.4826  # MAD of a normal distribution times this is its standard deviation


@dataclass(frozen=True, kw_only=True)
class SpikeRule:
    """Parameters of the detection rule (see the module docstring)."""

    window: int = 50
    z_start: float = 6.0
    z_end: float = 3.0
    min_history: int = 10
    rel_floor: float = 1e-4


@dataclass(frozen=True)
class Spike:
    start: int  # step at which z first exceeded z_start
    peak: int  # step of the highest loss in the spike
    end: int | None  # step of recovery or of the flat end; None when the log ends inside it
    recovered: bool
    z: float  # z-score of the peak against the frozen baseline
    baseline: float  # frozen baseline median (loss)
    peak_value: float = float("nan")  # the loss (the detected column) at the peak


def detect(
    df: pl.DataFrame, *, column: str = "loss", rule: SpikeRule | None = None
) -> dict[str, Any]:
    """Find loss spikes and propose t1 (recovered), t2 (explosion started), t3 (ended flat).

    Args:
        df: a losses table (needs `step` and `column`; rows with a null/NaN value are ignored).
        column: "loss" (default) or any monotone transform such as "perplexity".
        rule: detection parameters.

    Returns:
        {"t1", "t2", "t3": step or None, "spikes": [Spike as dict, ...], "rule": the parameters}.

    Raises:
        AdamscopeError: the table lacks the columns.
    """
    rule = rule or SpikeRule()
    spikes = find(df, column=column, rule=rule)
    t1, t2, t3 = _choose(spikes)
    found = [asdict(s) for s in spikes]
    return {"t1": t1, "t2": t2, "t3": t3, "spikes": found, "rule": asdict(rule)}


def find(df: pl.DataFrame, *, column: str = "loss", rule: SpikeRule | None = None) -> list[Spike]:
    """The loss spikes of a losses table, as `Spike`s (the rule of `detect`)."""
    rule = rule or SpikeRule()
    if "step" not in df.columns or column not in df.columns:
        raise AdamscopeError(f"losses table: needs columns 'step' and {column!r}, has {df.columns}")
    clean = df.select("step", column).drop_nulls().filter(pl.col(column).is_finite()).sort("step")
    return _find(clean["step"].to_numpy(), clean[column].to_numpy().astype(np.float64), rule)


def _robust(base: np.ndarray, rule: SpikeRule) -> tuple[float, float]:
    med = float(np.median(base))
    mad = float(np.median(np.abs(base - med)))
    return med, max(MAD_TO_STD * mad, rule.rel_floor * abs(med), 1e-12)


def _find(steps: np.ndarray, y: np.ndarray, rule: SpikeRule) -> list[Spike]:
    n = len(y)
    spikes: list[Spike] = []
    calm: list[int] = []  # indices of non-spike points usable as baseline
    i = 0
    while i < n:
        if len(calm) >= rule.min_history:
            med, scale = _robust(y[calm[-rule.window :]], rule)
            if (y[i] - med) / scale > rule.z_start:
                spike, next_i = _follow(steps, y, i, med, scale, rule)
                spikes.append(spike)
                if not spike.recovered:
                    calm = []  # the loss settled at a new level: forget the old baseline
                if next_i < n:
                    calm.append(next_i)
                i = next_i + 1
                continue
        calm.append(i)
        i += 1
    return spikes


def _follow(
    steps: np.ndarray, y: np.ndarray, i: int, med: float, scale: float, rule: SpikeRule
) -> tuple[Spike, int]:
    """Follow one spike from index i; return it and the index of its end (n when unfinished)."""
    n = len(y)
    back = y <= med + rule.z_end * scale
    j = i
    peak = i
    while j < n and not (j > peak and back[j]):
        if y[j] > y[peak]:
            peak = j
        j += 1
    z = float((y[peak] - med) / scale)
    if j < n:
        return Spike(
            int(steps[i]), int(steps[peak]), int(steps[j]), True, z, med, float(y[peak])
        ), j
    # Never back: did it settle at a new level? Compare with the level of the log's last window.
    tail = y[max(peak + 1, n - rule.window) :]
    if len(tail) < rule.min_history:
        return Spike(int(steps[i]), int(steps[peak]), None, False, z, med, float(y[peak])), n
    level, tail_scale = _robust(tail, rule)
    settled = np.nonzero(np.abs(y[peak + 1 :] - level) <= rule.z_end * tail_scale)[0]
    end = peak + 1 + int(settled[0]) if len(settled) else n - 1
    return Spike(
        int(steps[i]), int(steps[peak]), int(steps[end]), False, z, med, float(y[peak])
    ), end


def _choose(spikes: list[Spike]) -> tuple[int | None, int | None, int | None]:
    if not spikes:
        return None, None, None
    flat = [s for s in spikes if not s.recovered and s.end is not None]
    main = flat[0] if flat else max(spikes, key=lambda s: s.z)
    t2 = main.start
    t3 = flat[0].end if flat else None
    rec = [s for s in spikes if s.recovered and s.end is not None]
    before = [s.end for s in rec if s.end is not None and s.end <= t2]
    after = [s.end for s in rec if s.end is not None and s.end > t2]
    t1 = before[-1] if before else (after[0] if after else None)
    return t1, t2, t3
