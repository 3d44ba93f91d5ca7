"""The theory's stages of a tensor or layer (THEORY.md, Section 6 of Molybog et al.), judged
against what gradients independent across steps would give at the checkpoint's own step.

One checkpoint (`classify`, the snapshot):
    too_early  step < judge_from_step: even independent gradients give a bimodal r this early
               (r = +-1 exactly at t = 1), so bimodality cannot be told; suppression still can
    suppressed = rms(u)/rms(r) < thresholds.suppression            (eps swallows the update)
    r bimodal  = dip(r) >= thresholds.dip and p_null(dip) < thresholds.dip_p
                 (p_null: the dip's p-value against r's null at this step and sample size)
    healthy: neither; vanishing: suppressed only; primed: both; unstable: r bimodal, not suppressed.

A run (`verdicts`, the stage users see): a snapshot "unstable" is the theory's unstable stage only
on the chain healthy -> vanishing -> primed -> unstable, i.e. when the layer's previous judged
checkpoint was vanishing, primed or unstable, and u ~ r (suppression >= thresholds.u_equals_r:
eps no longer masks the update; a layer hovering at the suppression threshold is not "back").
Without that it is "correlated": strongly
time-correlated gradients with negligible eps make u ~ r bimodal in healthy training too (Adam
then moves like sign descent), and one checkpoint cannot tell the two apart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from adamscope.config import StageThresholds

STAGES = ("healthy", "vanishing", "primed", "unstable")  # the theory's four
# every value of the `stage` column (null aside), mildest first
VERDICTS = ("too_early", "healthy", "correlated", "vanishing", "primed", "unstable")
CHAIN = ("vanishing", "primed", "unstable")  # what may come right before "unstable"


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def classify(row: Mapping[str, Any], thresholds: StageThresholds | None = None) -> str | None:
    """Snapshot stage of a stats row (needs numel, suppression, dip_r and dip_p_null or dip_p_r;
    uses step and judge_from_step when present).

    Returns None when the tensor is too small (numel < min_numel) or a statistic is undefined
    (e.g. r_rms == 0: no gradient ever reached the tensor).
    """
    thr = thresholds or StageThresholds()
    numel = row.get("numel")
    if numel is None or numel < thr.min_numel:
        return None
    p_r = row.get("dip_p_null", row.get("dip_p_r"))
    sup, dip_r = row.get("suppression"), row.get("dip_r")
    if any(_nan(x) for x in (sup, dip_r, p_r)):
        return None
    suppressed = sup < thr.suppression
    if "judge_from_step" in row and not _nan(step := row.get("step")):  # a row with the null
        judge_from = row["judge_from_step"]  # None: the null never turns unimodal
        if judge_from is None or step < judge_from:
            return "vanishing" if suppressed else "too_early"
    bimodal = dip_r >= thr.dip and p_r < thr.dip_p
    if suppressed:
        return "primed" if bimodal else "vanishing"
    return "unstable" if bimodal else "healthy"


def verdict(
    snapshot: str | None,
    previous: str | None,
    *,
    suppression: float | None = None,
    thresholds: StageThresholds | None = None,
) -> str | None:
    """The stage of a checkpoint given its snapshot, its suppression and the verdict of the same
    layer (or tensor) at its previous judged checkpoint (None: no earlier one, or none judged)."""
    if snapshot != "unstable":
        return snapshot
    thr = thresholds or StageThresholds()
    back = suppression is not None and not _nan(suppression) and suppression >= thr.u_equals_r
    return "unstable" if previous in CHAIN and back else "correlated"


def verdicts(
    snapshots: Iterable[tuple[str | None, float | None]],
    thresholds: StageThresholds | None = None,
) -> list[str | None]:
    """Verdicts of one layer's (or tensor's) (snapshot, suppression) pairs in step order, by the
    chain rule above. Checkpoints with no stage (None) or too early to judge do not break or make
    a chain."""
    out: list[str | None] = []
    previous: str | None = None
    for s, sup in snapshots:
        v = verdict(s, previous, suppression=sup, thresholds=thresholds)
        out.append(v)
        if v not in (None, "too_early"):
            previous = v
    return out
