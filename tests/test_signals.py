"""adamscope.forensics.signals on synthetic series whose hit rates, lead times and false alarms are
known by construction."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from adamscope.errors import AdamscopeError
from adamscope.forensics.signals import (
    RunSeries,
    ScoreOptions,
    Signal,
    false_alarms,
    leads,
    on,
    score,
    series,
)

OPT = ScoreOptions(lead=20, refractory=20, after=50, every=10, baseline=5)


def _run(n: int, spikes: list[tuple[int, int]], dense: int = 30, **kw) -> RunSeries:
    """Periodic checks every 10 steps, plus every step in the `dense` steps before each spike."""
    steps = set(range(10, n + 1, 10))
    for s, _ in spikes:
        steps |= set(range(max(1, s - dense), s + 5))
    st = np.array(sorted(steps))
    return RunSeries(
        run="r", steps=st, values=np.zeros(len(st)), spikes=tuple(spikes), n_steps=n, **kw
    )


def _with(run: RunSeries, on_steps: list[int], value: float = 1.0) -> RunSeries:
    v = run.values.copy()
    v[np.isin(run.steps, on_steps)] = value
    return RunSeries(run.run, run.steps, v, run.spikes, run.n_steps, run.control)


def test_hits_and_lead_times_known():
    # 4 spikes: on 5 steps before the first, 3..1 before the second (lead 3), 25 before the third
    # (outside the 20-step window: a miss), never before the fourth
    r = _run(2000, [(300, 305), (700, 703), (1100, 1102), (1500, 1510)])
    r = _with(r, [295, 697, 698, 699, 1075])
    alarm = on(r.values, 0.5, "above")
    assert leads(r, alarm, OPT) == [5, 3, None, None]
    (row,) = score([r], [0.5], options=OPT)
    assert row["spikes"] == 4 and row["hits"] == 2 and row["hit_rate"] == 0.5
    assert row["leads"] == [3, 5] and row["lead_median"] == 4.0


def test_alarm_at_the_spike_step_is_no_lead():
    r = _with(_run(1000, [(500, 505)]), [500, 501])  # on at the spike itself, not before
    assert leads(r, on(r.values, 0.5, "above"), OPT) == [None]


def test_false_alarms_counted_once_per_refractory_period():
    # a control of 1000 steps (100 periodic checks): on at 100, 110 (one alarm: within 20 steps),
    # 500 and 700 -> 3 false alarms over 1000 steps
    c = _with(_run(1000, [], control=True), [100, 110, 500, 700])
    n, steps = false_alarms(c, on(c.values, 0.5, "above"), OPT)
    assert (n, steps) == (3, 1000)
    (row,) = score([c], [0.5], options=OPT)
    assert row["fa_per_1k_control"] == 3.0 and np.isnan(row["fa_per_1k_away"])
    assert np.isnan(row["hit_rate"]) and row["spikes"] == 0


def test_always_on_gives_the_refractory_ceiling():
    c = _run(1000, [], control=True)
    c = RunSeries(c.run, c.steps, np.ones(len(c.steps)), (), 1000, True)
    (row,) = score([c], [0.5], options=OPT)
    assert row["fa_per_1k_control"] == 1000 / 20


def test_alarms_near_spikes_are_not_false_alarms():
    # spike 400..410: checks in [380, 460] are excluded from the false-alarm count
    r = _with(_run(1000, [(400, 410)]), [390, 420, 460, 470, 800])
    n, steps = false_alarms(r, on(r.values, 0.5, "above"), OPT)
    assert n == 2  # 470 and 800
    assert steps == (100 - 9) * 10  # periodic checks 380, 390, ..., 460 excluded


def test_thresholds_trace_a_curve_and_below_direction():
    r = _run(1000, [(500, 505)])
    v = r.values.copy()
    v[r.steps == 490] = 0.2  # low before the spike
    v[r.steps == 200] = 0.4  # lower than normal once, far from it
    v[v == 0] = 1.0
    r = RunSeries(r.run, r.steps, v, r.spikes, r.n_steps)
    rows = score([r], [0.3, 0.5], direction="below", options=OPT)
    assert [x["hits"] for x in rows] == [1, 1]
    assert [x["fa_away"] for x in rows] == [0, 1]
    assert rows[0]["leads"] == [10]


def _layers(steps: list[int], per_layer: dict[str, list[float]]) -> pl.DataFrame:
    rows = []
    for lay, xs in per_layer.items():
        rows += [{"step": s, "layer": lay, "x": x} for s, x in zip(steps, xs, strict=True)]
    return pl.DataFrame(rows)


def test_series_ratio_to_trailing_median_and_reduce():
    steps = [10, 20, 30, 40, 50, 51]
    df = _layers(steps, {"a": [1, 1, 1, 1, 1, 2.0], "b": [2, 2, 2, 2, 2, 3.0]})
    sig = Signal(name="x_ratio", column="x", thresholds=(1.5,), transform="ratio")
    s = series(df, sig, options=OPT)
    got = dict(zip(s["step"].to_list(), s["value"].to_list(), strict=True))
    assert got[51] == 2.0  # a: 2 / median(1, 1, 1, 1, 1); b: 1.5; max over layers
    assert got[40] == 1.0 and got[20] is None  # three periodic checks needed before a step
    low = series(df, Signal(name="m", column="x", thresholds=(), reduce="min"), options=OPT)
    assert low["value"].to_list() == [1, 1, 1, 1, 1, 2.0]


def test_series_z_and_norm():
    steps = [10, 20, 30, 40, 50, 60, 61]
    # global norm sqrt(3^2 + 4^2) = 5 on periodic checks with +-1 noise, then 10 at step 61
    a = [3, 3, 3, 3, 3, 3, 6]
    b = [4, 4.8, 3.2, 4, 4.8, 3.2, 8]
    df = _layers(steps, {"a": a, "b": b})
    s = series(
        df, Signal(name="z", column="x", thresholds=(), transform="z", reduce="norm"), options=OPT
    )
    norms = np.hypot(np.array(a, float), np.array(b, float))
    base = norms[1:6]
    med = np.median(base)
    mad = np.median(np.abs(base - med)) * 1.4826
    assert s["value"][-1] == pytest.approx((10 - med) / mad)


def test_series_stage_match_and_skip_layers():
    steps = [10, 20, 30]
    df = pl.DataFrame(
        {
            "step": steps * 2,
            "layer": ["head"] * 3 + ["block.0"] * 3,
            "stage": ["primed", "primed", "healthy", "healthy", "primed", None],
        }
    )
    sig = Signal(name="p", column="stage", thresholds=(0.5,), match=("primed",), reduce="any")
    assert series(df, sig, options=OPT)["value"].to_list() == [1.0, 1.0, 0.0]
    nohead = Signal(
        name="p",
        column="stage",
        thresholds=(0.5,),
        match=("primed",),
        reduce="any",
        skip_layers=("head",),
    )
    assert series(df, nohead, options=OPT)["value"].to_list() == [0.0, 1.0, 0.0]
    with pytest.raises(AdamscopeError, match="no column"):
        series(df, Signal(name="q", column="nope", thresholds=()), options=OPT)


def test_options_checked():
    with pytest.raises(AdamscopeError, match="lead"):
        ScoreOptions(lead=0)


def test_every_default_signal_reads_a_layers_column():
    from adamscope.forensics.signals import SIGNALS
    from adamscope.tables.schema import LAYERS

    columns = {c.name for c in LAYERS}
    assert {s.column for s in SIGNALS} <= columns
    assert len({s.name for s in SIGNALS}) == len(SIGNALS)
