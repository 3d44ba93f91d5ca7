"""The theory's stages of a tensor or layer (THEORY.md, Section 6 of Molybog et al.).

suppressed = rms(u)/rms(r) < thresholds.suppression       (eps swallows the update)
r bimodal  = dip(r) >= thresholds.dip and p(dip) < thresholds.dip_p
healthy: neither; vanishing: suppressed only; primed: both; unstable: r bimodal, not suppressed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from adamscope.config import StageThresholds

STAGES = ("healthy", "vanishing", "primed", "unstable")


def classify(row: Mapping[str, Any], thresholds: StageThresholds | None = None) -> str | None:
    """Stage of a stats row (needs numel, suppression, dip_r, dip_p_r).

    Returns None when the tensor is too small (numel < min_numel) or a statistic is undefined
    (e.g. r_rms == 0: no gradient ever reached the tensor).
    """
    thr = thresholds or StageThresholds()
    numel = row.get("numel")
    if numel is None or numel < thr.min_numel:
        return None
    sup, dip_r, p_r = row.get("suppression"), row.get("dip_r"), row.get("dip_p_r")
    if any(x is None or math.isnan(x) for x in (sup, dip_r, p_r)):
        return None
    suppressed = sup < thr.suppression
    bimodal = dip_r >= thr.dip and p_r < thr.dip_p
    if suppressed:
        return "primed" if bimodal else "vanishing"
    return "unstable" if bimodal else "healthy"
