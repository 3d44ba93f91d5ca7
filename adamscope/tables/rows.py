"""Table rows from sketches: the statistics columns of tensors/layers.parquet, with the dip tests
and the stage rule (docs/tables.md lists every column, docs/stages.md the rule)."""

from __future__ import annotations

import math
from typing import Any

from adamscope.config import StageThresholds
from adamscope.stats.bimodality import dip
from adamscope.stats.sketch import TensorSketch
from adamscope.stats.stages import classify


def dips(sk: TensorSketch) -> tuple[float, float, float, float, int]:
    """(dip_u, dip_r, p_u, p_r, n): Hartigan's dip and its p-value on the sketch's dip sample."""
    su, sr = sk.dip_sample()
    du, pu = dip(su)
    dr, pr = dip(sr)
    return du, dr, pu, pr, int(su.size)


def stats_row(sk: TensorSketch, thresholds: StageThresholds | None = None) -> dict[str, Any]:
    """The statistics columns of a tensor's or a layer's row, stage included.

    `thresholds` defaults to the ones the sketch was computed with (its StatsConfig).
    """
    n = sk.mu.n
    nan = math.nan
    u_rms, r_rms = sk.mu.rms, sk.mr.rms
    du, dr, pu, pr, dn = dips(sk)
    row: dict[str, Any] = {
        "numel": sk.numel,
        "u_mean": sk.mu.mean if n else nan,
        "u_std": sk.mu.std,
        "u_rms": u_rms,
        "r_mean": sk.mr.mean if n else nan,
        "r_std": sk.mr.std,
        "r_rms": r_rms,
        "suppression": u_rms / r_rms if n and r_rms > 0 else nan,
        "grad_rms": math.sqrt(sk.vhat_sum / n) if n else nan,
        "frac_below_eps": sk.below_eps / n if n else nan,
        "m_norm": math.sqrt(sk.m_sq),
        "v_l1": sk.v_sum,
        "zero_v": sk.zero_v,
        "nonfinite": sk.nonfinite,
        "u_min": sk.u_min if n else nan,
        "u_max": sk.u_max if n else nan,
        "r_min": sk.r_min if n else nan,
        "r_max": sk.r_max if n else nan,
        "dip_u": du,
        "dip_r": dr,
        "dip_p_u": pu,
        "dip_p_r": pr,
        "dip_n": dn,
        "bc_u": sk.mu.bimodality_coefficient(),
        "bc_r": sk.mr.bimodality_coefficient(),
    }
    row["stage"] = classify(row, thresholds or sk.cfg.thresholds)
    return row
