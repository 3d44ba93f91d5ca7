"""The verdict: which layers reached primed/unstable and when; the paper's remedies for the run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from adamscope.report.model import FLAGGED, SEVERITY, Checkpoint, RunData, checkpoint_before


@dataclass
class Verdict:
    level: str  # unstable | primed | vanishing | healthy | unknown
    headline: str
    details: list[str] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)  # flagged layers, worst first
    remedies: list[tuple[str, str]] = field(default_factory=list)  # (title, text)


def fmt(x: float | None, digits: int = 2) -> str:
    """Short human number: 3.2e-10, 0.41, 1,234."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, int) or (float(x).is_integer() and abs(x) < 1e6):
        return f"{int(x):,}"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        mant, exp = f"{x:.{digits - 1}e}".split("e")
        return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"
    return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.{digits + 1}g}"


def _row(run: RunData, layer: str, ck: Checkpoint) -> dict[str, Any]:
    got = run.layers.filter((pl.col("layer") == layer) & (pl.col("checkpoint") == ck.name))
    return got.row(0, named=True) if got.height else {}


def _eps(run: RunData, layers: list[str]) -> float | None:
    e = run.tensors.filter(pl.col("layer").is_in(layers))["eps"]
    return float(e.max()) if e.len() else None


def verdict(run: RunData, *, thresholds: dict[str, Any]) -> Verdict:
    """Summarise the stage history into a verdict and remedies for this run."""
    cks = run.checkpoints
    flagged = [h for h in run.histories if h.flagged]
    vanishing = [h for h in run.histories if not h.flagged and "vanishing" in h.first]
    if all(s is None for h in run.histories for s in h.stages):
        return Verdict("unknown", "No layer could be judged: every layer is below min_numel.")
    if not flagged:
        level = "vanishing" if vanishing else "healthy"
        v = Verdict(level, _quiet_headline(run, vanishing))
        if vanishing:
            v.details.append(_watch(vanishing, cks))
        return v

    level = "unstable" if any("unstable" in h.first for h in flagged) else "primed"
    flagged.sort(key=lambda h: (-SEVERITY[h.worst], min(h.first.get(s, 1 << 30) for s in FLAGGED)))
    rows = []
    for h in flagged:
        i0 = min(h.first[s] for s in FLAGGED if s in h.first)
        r0 = _row(run, h.layer, cks[i0])
        rows.append(
            {
                "layer": h.layer,
                "primed": cks[h.first["primed"]].step if "primed" in h.first else None,
                "unstable": cks[h.first["unstable"]].step if "unstable" in h.first else None,
                "now": h.stages[-1],
                "flag_ckpt": cks[i0],
                "flag_stage": h.stages[i0],
                "grad_rms": r0.get("grad_rms"),
                "dip_r": r0.get("dip_r"),
                "suppression": r0.get("suppression"),
                "zero_v": r0.get("zero_v"),
                "rho_hat": r0.get("rho_hat"),
                "null_dip_q99": r0.get("null_dip_q99"),
                "why": r0.get("stage_reason"),
            }
        )
    first = min(rows, key=lambda r: r["flag_ckpt"].index)
    n_u = sum(r["unstable"] is not None for r in rows)
    n_p = len(rows)
    now = [r for r in rows if r["now"] in FLAGGED]
    head = (
        f"{n_u} layer{'s' * (n_u != 1)} reached the unstable stage"
        if level == "unstable"
        else f"{n_p} layer{'s' * (n_p != 1)} reached the primed stage (the theory's early warning)"
    )
    if level == "unstable":
        fu = min((r for r in rows if r["unstable"] is not None), key=lambda r: r["unstable"])
        head += f" (first {fu['layer']} at step {fu['unstable']})"
    head += f"; the first warning was {first['layer']} turning {first['flag_stage']} at step "
    head += f"{first['flag_ckpt'].step}."
    v = Verdict(level, head, layers=rows)
    v.details.append(
        f"{n_p} of {len(run.histories)} layers were primed or unstable at some checkpoint; "
        + (
            f"{len(now)} still are at the last checkpoint (step {cks[-1].step})."
            if now
            else f"none is at the last checkpoint (step {cks[-1].step}): the layers recovered"
            + _loss_recovery(run)
        )
    )
    measured = corpus_line(level)
    if measured:
        v.details.append(measured)
    if any(r["layer"] == "head" for r in rows):
        v.details.append(
            "The head is flagged. In the output layer, rows of tokens that (almost) never occur get a "
            "steady one-signed gradient, so their r is bimodal and, with a large eps, suppressed: "
            "'primed' there is often harmless (seen on our small byte-level proxy runs, "
            "docs/experiments/proxy-spikes.md). Weigh the early layers' stages first."
        )
    for sp in run.spikes[:5]:
        v.details.append(_spike_line(run, sp))
    if vanishing:
        v.details.append(_watch(vanishing, cks))
    v.remedies = remedies(run, rows, thresholds=thresholds)
    return v


CORPUS = Path(__file__).with_name("spike_scores.csv")  # experiments/spike_scores.py writes it


def corpus_line(stage: str) -> str | None:
    """What the `stage` verdict measured on adamscope's spike corpus (docs/experiments/
    spike-corpus.md): the share of spikes it preceded and its false alarms per 1,000 steps, from
    the score table the corpus run wrote; None when the table has no such row."""
    import csv

    try:
        with open(CORPUS, newline="") as f:
            row = next((r for r in csv.DictReader(f) if r["signal"] == f"stage_{stage}"), None)
    except (OSError, KeyError, csv.Error):
        return None
    if row is None:
        return None
    hits, spikes, fa = int(row["hits"]), int(row["spikes"]), float(row["fa_per_1k"])
    return (
        f"How far to trust it: on adamscope's spike corpus (docs/experiments/spike-corpus.md; "
        f"{spikes} loss spikes of small GPTs trained on CPU, most in warm-up) the '{stage}' stage "
        f"preceded {hits} of {spikes} spikes within 20 steps, with {fmt(fa, 2)} false alarms per "
        f"1,000 steps. {spikes} spikes is a small sample: a rough rate, not a guarantee."
    )


def _loss_recovery(run: RunData) -> str:
    flat = [(k, s) for k, s in enumerate(run.spikes, 1) if not s.recovered]
    if not flat:
        return "."
    k, s = flat[-1]
    end = f"ended flat at step {s.end}" if s.end is not None else "was still on when the log ended"
    return f", but the loss did not: spike {k} {end}."


def _quiet_headline(run: RunData, vanishing: list[Any]) -> str:
    if vanishing:
        return (
            f"No layer reached primed or unstable; {len(vanishing)} layer"
            f"{'s' * (len(vanishing) != 1)} had gradients below eps (vanishing)."
        )
    return f"Every judged layer stayed healthy over {len(run.checkpoints)} checkpoints."


def _watch(vanishing: list[Any], cks: list[Checkpoint]) -> str:
    names = ", ".join(h.layer for h in vanishing[:8]) + (" ..." if len(vanishing) > 8 else "")
    return (
        f"Watch {len(vanishing)} vanishing layer{'s' * (len(vanishing) != 1)} ({names}): eps "
        "swallows their update; time-correlated gradients would turn them primed."
    )


def _spike_line(run: RunData, sp: Any) -> str:
    before = checkpoint_before(run, sp.start)
    line = f"Loss spike at step {sp.start} (peak {fmt(sp.peak_value, 3)} at step {sp.peak}, "
    line += f"from a baseline of {fmt(sp.baseline, 3)}"
    if sp.end is None:
        line += ", still inside it when the log ends)"
    else:
        line += f", {'recovered' if sp.recovered else 'ended flat'} at step {sp.end})"
    if before is None:
        return line + "; no checkpoint precedes it."
    pre = [h.layer for h in run.histories if h.stages[before.index] in FLAGGED]
    if pre:
        shown = ", ".join(pre[:6]) + (f" (+{len(pre) - 6})" if len(pre) > 6 else "")
        return (
            line
            + f": at the checkpoint before it (step {before.step}) {shown} were already flagged."
        )
    return line + f": no layer was primed at the checkpoint before it (step {before.step})."


def suggested_eps(grad_rms: float) -> float:
    """A power of ten at least 10x below `grad_rms`."""
    return 10.0 ** math.floor(math.log10(grad_rms) - 1) if grad_rms > 0 else 0.0


def remedies(
    run: RunData, rows: list[dict[str, Any]], *, thresholds: dict[str, Any]
) -> list[tuple[str, str]]:
    """Paper Section 7.1's remedies, with this run's layers, steps and numbers filled in."""
    names = [r["layer"] for r in rows]
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    eps = _eps(run, names)
    grads = [r["grad_rms"] for r in rows if r["grad_rms"] is not None and r["grad_rms"] > 0]
    low = min(grads) if grads else None
    out: list[tuple[str, str]] = []
    text = f"eps is {fmt(eps)} for {shown}"
    if low is not None:
        text += (
            f"; their gradient RMS fell to {fmt(low)} when they were first flagged. Set eps below "
            f"that, e.g. eps = {fmt(suggested_eps(low))}, so eps no longer masks the ratio r."
        )
    dtypes = set(run.tensors["dtype"].drop_nulls().unique().to_list())
    if dtypes & {"torch.bfloat16", "torch.float16", "bfloat16", "float16"}:
        text += (
            " The optimizer state is stored in 16-bit floats: check the new eps is representable."
        )
    out.append(("Lower eps", text))
    zero_v = sum(int(r["zero_v"] or 0) for r in rows)
    out.append(
        (
            "eps = 0, with u = 0 where v = 0",
            f"Remove eps and define the update as 0 wherever v == 0 ({fmt(zero_v)} such "
            "coordinates in the flagged layers when first flagged); the paper never saw m != 0 "
            "with v == 0, so nothing else needs eps.",
        )
    )
    dip = thresholds.get("dip", 0.01)
    first = min(rows, key=lambda r: r["flag_ckpt"].index)
    out.append(
        (
            "Reset that layer's optimizer state when r turns bimodal",
            f"dip(r) >= {dip} marks r bimodal. {first['layer']} crossed it by step "
            f"{first['flag_ckpt'].step} (dip {fmt(first['dip_r'])}); a monitor of dip(r) per layer "
            f"would have reset exp_avg/exp_avg_sq of {shown} there.",
        )
    )
    betas = run.tensors.select("beta1", "beta2").unique().rows()
    b = ", ".join(f"({b1:g}, {b2:g})" for b1, b2 in betas[:3])
    out.append(
        (
            "Smaller batch or betas",
            f"Betas are {b}. A smaller batch adds gradient noise, which breaks the time "
            "correlation that makes r bimodal; smaller betas change the averaging window (paper "
            "Section 7.1). Both have a price: data-parallel throughput, or staler updates.",
        )
    )
    out.append(("Skip the triggering batch", _skip_text(run, rows)))
    return out


def _skip_text(run: RunData, rows: list[dict[str, Any]]) -> str:
    if not run.spikes:
        unstable = [r for r in rows if r["unstable"] is not None]
        if unstable:
            u = min(unstable, key=lambda r: r["unstable"])
            return (
                f"{u['layer']} turned unstable by step {u['unstable']}; no loss log was given to "
                "locate the batch. Roll back to the last checkpoint before it and skip the batches "
                "that follow."
            )
        return (
            "No loss spike yet. If one comes, roll back to the last checkpoint before it and skip "
            "the batches up to the spike: the chain reaction needs that batch's large gradient."
        )
    sp = run.spikes[0]
    before = checkpoint_before(run, sp.start)
    where = f"{before.name} (step {before.step})" if before else "the last checkpoint before it"
    return (
        f"The first loss spike starts at step {sp.start}. Roll back to {where} and skip the batches "
        f"up to step {sp.start}: without the large gradient of that batch the primed layers do not "
        "start the chain reaction."
    )
