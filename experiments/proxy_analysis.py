"""Do adamscope's signals precede the loss spikes of a proxy run? Lead times and false alarms,
computed from adamscope's own tables (layers.parquet, gradients.parquet, losses.parquet).

A *signal* is a per-(layer, checkpoint) condition read off the tables. The stage-based ones come
twice: from the tables' verdicts (`stage`, `stage_snapshot`: the rule of issue 13, r judged
against its null at the checkpoint's step, then the run-level chain rule of stats.stages) and,
with the suffix `_old`, from the OLD fixed-threshold rule recomputed from the legacy columns
(stats.stages.classify on numel, suppression, dip_r, dip_p_r: bimodal = dip_r >= thresholds.dip
and dip_p_r < thresholds.dip_p against diptest's uniform reference, at any step, no chain):
  primed           stage == "primed"                      (THEORY.md: the early warning)
  primed_early     primed, in the shallower half of the layers (depth <= max depth // 2):
                   the paper's early layers, without the head's rare-byte rows
  unstable         stage == "unstable"
  vanishing        stage in {vanishing, primed}           (eps swallows the update)
  r_bimodal        new: stage_snapshot in {primed, unstable}, i.e. dip_r >= thresholds.dip and
                   dip_p_null < thresholds.dip_p and step >= judge_from_step;
                   old: dip_r >= thresholds.dip and dip_p_r < thresholds.dip_p
  correlated       stage == "correlated" (new only: a snapshot "unstable" with no vanishing,
                   primed or unstable at the layer's previous judged checkpoint)
  too_early        stage == "too_early" (new only: step < judge_from_step, not suppressed)
The others do not depend on the stage rule:
  below_eps_rise   frac_below_eps - its value `lag` steps earlier >= 0.1
  v_l1_rise        v_l1 / its value `lag` steps earlier >= 2
  v_l1_fall        v_l1 / its value `lag` steps earlier <= 0.5
  cos_negative     update_grad_cos < 0 (gradients.parquet, exact pairs only)
"Its value `lag` steps earlier" is the latest checkpoint at or before step - lag.
A signal is *on* at a checkpoint when it holds in at least one layer.

Per spike (adamscope.logs.spikes.detect on losses.parquet; start s): the last checkpoint before
the spike is the latest at step <= s - 1 (the state the spiking batch met). The lead time is
s - (the first checkpoint of the unbroken run of "on" checkpoints ending there), looking back at
most `horizon` steps; None when the signal is off at that checkpoint (a miss).
False alarms: periodic checkpoints (step % ckpt_every == 0) where the signal is on and no spike
starts within the next `horizon` steps; their rate is per periodic checkpoint checked.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from adamscope.config import StageThresholds
from adamscope.report import svg
from adamscope.stats.stages import classify

log = logging.getLogger(__name__)

SIGNALS = (
    "primed",
    "primed_old",
    "primed_early",
    "primed_early_old",
    "unstable",
    "unstable_old",
    "vanishing",
    "vanishing_old",
    "r_bimodal",
    "r_bimodal_old",
    "correlated",
    "too_early",
    "below_eps_rise",
    "v_l1_rise",
    "v_l1_fall",
    "cos_negative",
)


@dataclass(frozen=True, kw_only=True)
class SignalOptions:
    lag: int = 25
    horizon: int = 100
    ckpt_every: int = 50
    thresholds: StageThresholds = StageThresholds()


# the verdicts the OLD rule did not have (the other stage signals have an `<name>_old` twin)
NEW_ONLY = ("correlated", "too_early")


def old_stages(lay: pl.DataFrame, thresholds: StageThresholds) -> pl.Series:
    """The OLD fixed-threshold stage of every row, recomputed from the legacy columns
    (stats.stages.classify without dip_p_null / judge_from_step: diptest's uniform reference,
    no too_early, no chain rule)."""
    legacy = lay.select("numel", "suppression", "dip_r", "dip_p_r").to_dicts()
    return pl.Series("stage_old", [classify(r, thresholds) for r in legacy], dtype=pl.Utf8)


def run_tables(run: Path, out: Path) -> Path:
    """adamscope analyze of a proxy run folder into `out` (tables, gradients, losses)."""
    from adamscope.api import AnalyzeOptions, analyze

    analyze(Path(run), options=AnalyzeOptions(out=Path(out), tensor_histograms=False))
    return Path(out)


def signal_frame(tables: Path, opts: SignalOptions) -> pl.DataFrame:
    """Long table (step, layer, signal, on) of every signal at every checkpoint and layer."""
    lay = pl.read_parquet(tables / "layers.parquet").sort("layer", "step")
    thr = opts.thresholds
    lay = lay.with_columns(old_stages(lay, thr))
    ref = (
        lay.select("layer", pl.col("step").alias("ref_step"), "frac_below_eps", "v_l1")
        .rename({"frac_below_eps": "ref_below", "v_l1": "ref_v_l1"})
        .sort("ref_step")
    )
    lagged = (
        lay.with_columns(key=pl.col("step") - opts.lag)
        .sort("key")
        .join_asof(
            ref,
            left_on="key",
            right_on="ref_step",
            by="layer",
            strategy="backward",
            check_sortedness=False,
        )
    )
    early = pl.col("depth") <= pl.col("depth").max() // 2
    new, old = pl.col("stage"), pl.col("stage_old")
    wide = lagged.select(
        "step",
        "layer",
        primed=new == "primed",
        primed_old=old == "primed",
        primed_early=(new == "primed") & early,
        primed_early_old=(old == "primed") & early,
        unstable=new == "unstable",
        unstable_old=old == "unstable",
        vanishing=new.is_in(["vanishing", "primed"]),
        vanishing_old=old.is_in(["vanishing", "primed"]),
        r_bimodal=pl.col("stage_snapshot").is_in(["primed", "unstable"]),
        r_bimodal_old=(pl.col("dip_r") >= thr.dip) & (pl.col("dip_p_r") < thr.dip_p),
        correlated=new == "correlated",
        too_early=new == "too_early",
        below_eps_rise=(pl.col("frac_below_eps") - pl.col("ref_below")) >= 0.1,
        v_l1_rise=(pl.col("v_l1") / pl.col("ref_v_l1")) >= 2.0,
        v_l1_fall=(pl.col("v_l1") / pl.col("ref_v_l1")) <= 0.5,
    )
    frames = [wide.unpivot(index=["step", "layer"], variable_name="signal", value_name="on")]
    grads = tables / "gradients.parquet"
    if grads.exists():
        g = pl.read_parquet(grads).filter((pl.col("level") == "layer") & pl.col("exact"))
        frames.append(
            g.select(
                "step",
                "layer",
                signal=pl.lit("cos_negative"),
                on=pl.col("update_grad_cos") < 0,
            )
        )
    df = pl.concat(frames, how="vertical_relaxed")
    return df.with_columns(pl.col("on").fill_null(False)).sort("signal", "step", "layer")


def evaluate(tables: Path, opts: SignalOptions) -> dict[str, Any]:
    """Spikes, per-spike lead times and false alarms of every signal for one analysed run."""
    from adamscope.logs import spikes as spike_mod

    losses = pl.read_parquet(tables / "losses.parquet")
    found = spike_mod.detect(losses)["spikes"]
    sig = signal_frame(tables, opts)
    starts = [s["start"] for s in found]
    result: dict[str, Any] = {"spikes": found, "signals": {}}
    for name in SIGNALS:
        rows = sig.filter(pl.col("signal") == name)
        if rows.is_empty():
            continue
        by_step = rows.group_by("step").agg(
            pl.col("on").any(), pl.col("layer").filter(pl.col("on")).alias("layers")
        )
        by_step = by_step.sort("step")
        steps = by_step["step"].to_list()
        on = dict(zip(steps, by_step["on"].to_list(), strict=True))
        layers = dict(zip(steps, by_step["layers"].to_list(), strict=True))
        per_spike = [_lead(s, steps, on, layers, opts.horizon) for s in starts]
        periodic = [s for s in steps if s % opts.ckpt_every == 0]
        false = [
            s for s in periodic if on[s] and not any(s < t <= s + opts.horizon for t in starts)
        ]
        per_layer = (
            rows.filter(pl.col("step") % opts.ckpt_every == 0)
            .group_by("layer")
            .agg(pl.col("on").mean())
            .sort("layer")
        )
        result["signals"][name] = {
            "per_spike": per_spike,
            "on_fraction_by_layer": dict(per_layer.iter_rows()),
            "hits": sum(p["lead"] is not None for p in per_spike),
            "periodic_checked": len(periodic),
            "periodic_on": sum(on[s] for s in periodic),
            "false_alarms": len(false),
            "false_alarm_rate": len(false) / len(periodic) if periodic else None,
        }
    return result


# the report's stage letters (None, not judged, is drawn as '.' here)
LETTER = {k: v for k, v in svg.LETTER.items() if k is not None}


def stage_timeline(tables: Path, start: int, *, before: int = 12, after: int = 8) -> str:
    """Markdown table of every layer's stage at the checkpoints within `before` steps before and
    `after` steps after a spike's start, plus the loss there. A cell is the verdict's letter
    (E too_early, H healthy, C correlated, V vanishing, P primed, U unstable, '.' = none), followed
    by the OLD rule's letter in parentheses where the two differ."""
    lay = pl.read_parquet(tables / "layers.parquet").filter(
        pl.col("step").is_between(start - before, start + after)
    )
    if lay.is_empty():
        return f"(no checkpoint within {before} steps of {start})\n"
    lay = lay.with_columns(old_stages(lay, StageThresholds()))
    loss = dict(pl.read_parquet(tables / "losses.parquet").select("step", "loss").iter_rows())
    order = lay.sort("depth").unique("layer", maintain_order=True)["layer"].to_list()
    grid = {}
    for r in lay.iter_rows(named=True):
        new, old = LETTER.get(r["stage"], "."), LETTER.get(r["stage_old"], ".")
        grid[(r["step"], r["layer"])] = new if new == old else f"{new} ({old})"
    lines = ["| step | loss | " + " | ".join(order) + " |", "|---" * (len(order) + 2) + "|"]
    for st in sorted({k[0] for k in grid}):
        cells = " | ".join(grid.get((st, la), " ") for la in order)
        mark = " (spike)" if st == start else ""
        lines.append(f"| {st}{mark} | {loss.get(st, float('nan')):.2f} | {cells} |")
    return "\n".join(lines) + "\n"


def _lead(
    start: int, steps: list[int], on: dict[int, bool], layers: dict[int, list[str]], horizon: int
) -> dict[str, Any]:
    before = [s for s in steps if start - horizon <= s <= start - 1]
    if not before or not on[before[-1]]:
        last = before[-1] if before else None
        return {
            "spike": start,
            "last_checkpoint": last,
            "lead": None,
            "capped": False,
            "layers": [],
        }
    first = before[-1]
    for s in reversed(before):
        if not on[s]:
            break
        first = s
    return {
        "spike": start,
        "last_checkpoint": before[-1],
        "lead": start - first,
        # the "on" run reaches back to the run's first checkpoint or the horizon: a lower bound
        "capped": first == before[0],
        "layers": sorted(layers[before[-1]]),
    }


def write_images(tables: Path, img_dir: Path, *, prefix: str, dpi: int = 60) -> list[Path]:
    """Heatmap (Figure 4) and Figures 7-10 as small PNGs in img_dir (`<prefix>_<figure>.png`)."""
    from adamscope.figures import write_figures, write_heatmap

    img_dir.mkdir(parents=True, exist_ok=True)
    kept = []
    with tempfile.TemporaryDirectory() as tmp:
        files = write_heatmap(tables, Path(tmp) / "heatmap", formats=("png",), dpi=dpi)
        files += write_figures(Path(tmp), tables, only=[7, 8, 9, 10], formats=("png",), dpi=dpi)
        for f in files:
            if f.suffix == ".png":
                target = img_dir / f"{prefix}_{f.name}"
                shutil.copyfile(f, target)
                kept.append(target)
    return kept


def _lead_text(p: dict[str, Any]) -> str:
    """A lead time, '-' for a miss, '*' when capped (on since the first checkpoint in reach)."""
    if p["lead"] is None:
        return "-"
    return f"{p['lead']}{'*' if p.get('capped') else ''}"


def _leads(r: dict[str, Any]) -> str:
    return ", ".join(_lead_text(p) for p in r["per_spike"])


def _layers(r: dict[str, Any]) -> str:
    return ", ".join(sorted({x for p in r["per_spike"] for x in p["layers"]}))


def _alarms(r: dict[str, Any]) -> str:
    rate = r["false_alarm_rate"]
    return f"{r['false_alarms']} ({'-' if rate is None else f'{rate:.2f}'})"


def _pairs(res: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None, dict[str, Any]]]:
    """(name, old-rule result or None, new/rule-free result) per signal, in SIGNALS order."""
    sig = res["signals"]
    return [
        (n, sig.get(f"{n}_old"), sig[n]) for n in SIGNALS if n in sig and not n.endswith("_old")
    ]


def markdown(name: str, res: dict[str, Any]) -> str:
    """The doc's tables for one run: spikes, then every signal's lead times and false alarms,
    the OLD rule beside the verdicts for the stage-based signals ('=': the signal does not
    depend on the stage rule; 'n/a': the old rule had no such stage)."""
    lines = [
        f"#### {name}",
        "",
        "| spike start | peak | end | recovered | z |",
        "|---|---|---|---|---|",
    ]
    for s in res["spikes"]:
        lines.append(
            f"| {s['start']} | {s['peak']} | {s['end']} | {s['recovered']} | {s['z']:.1f} |"
        )
    if not res["spikes"]:
        lines.append("| (none) | | | | |")
    lines += [
        "",
        "Lead time per spike in steps (- = off at the last checkpoint before it; * = capped: on "
        "since the run's first checkpoint or the horizon); old = the fixed-threshold rule, "
        "new = the verdicts against the null (issue 13).",
        "",
        "| signal | lead, old | lead, new | layers on, old | layers on, new "
        "| periodic on, old | periodic on, new | false alarms (rate), old "
        "| false alarms (rate), new |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for sig, old, new in _pairs(res):
        nolead = "no spikes"
        lead_new = _leads(new) or nolead
        on_new = f"{new['periodic_on']}/{new['periodic_checked']}"
        if old is not None:
            lead_old, lay_old = _leads(old) or nolead, _layers(old)
            on_old, fa_old = f"{old['periodic_on']}/{old['periodic_checked']}", _alarms(old)
        else:
            mark = "n/a" if sig in NEW_ONLY else "="
            lead_old = lay_old = on_old = fa_old = mark
        lines.append(
            f"| {sig} | {lead_old} | {lead_new} | {lay_old} | {_layers(new)} | {on_old} | "
            f"{on_new} | {fa_old} | {_alarms(new)} |"
        )
    lines += ["", "on-fraction of periodic checkpoints per layer:", ""]
    for sig, r in res["signals"].items():
        fr = ", ".join(f"{k} {v:.2f}" for k, v in r["on_fraction_by_layer"].items())
        lines.append(f"- {sig}: {fr}")
    return "\n".join(lines) + "\n"


def summary(results: dict[str, dict[str, Any]]) -> str:
    """One table over all runs: per signal, the lead time of every spike and the false-alarm
    rate of every run, 'old -> new' for the stage-based signals (the old rule, then the verdicts)."""
    spikes = [(run, s["start"]) for run, res in results.items() for s in res["spikes"]]
    head = ["signal"] + [f"spike @{st} ({run})" for run, st in spikes]
    head += [f"false alarms {run}" for run in results]
    lines = [
        "#### Summary: lead times and false-alarm rates, old rule -> verdicts",
        "",
        "A cell 'a -> b' is the OLD fixed-threshold rule (a) and the verdicts against the null (b);"
        " one value: the signal does not depend on the stage rule (or is new-only). Leads in steps"
        " (- = a miss, * = capped at the run's first checkpoint or the horizon); false alarms per"
        " periodic checkpoint.",
        "",
        "| " + " | ".join(head) + " |",
        "|---" * len(head) + "|",
    ]
    first = next(iter(results.values()))
    for sig, _, _ in _pairs(first):
        cells = [sig]

        def both(run: str, fn: Any, sig: str = sig) -> str:
            r = results[run]["signals"]
            new = fn(r[sig]) if sig in r else "?"
            if f"{sig}_old" not in r:
                return new
            old = fn(r[f"{sig}_old"])
            return f"{old} -> {new}"

        for run, st in spikes:
            i = [s["start"] for s in results[run]["spikes"]].index(st)

            def lead(r: dict[str, Any], i: int = i) -> str:
                return _lead_text(r["per_spike"][i])

            cells.append(both(run, lead))
        for run in results:

            def rate(r: dict[str, Any]) -> str:
                x = r["false_alarm_rate"]
                return "-" if x is None else f"{x:.2f}"

            cells.append(both(run, rate))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="lead times and false alarms of adamscope's signals")
    ap.add_argument("runs", type=Path, nargs="+", help="proxy run folders")
    ap.add_argument("--out", type=Path, required=True, help="where tables and results go")
    ap.add_argument("--img", type=Path, default=None, help="write figures of the first run here")
    ap.add_argument("--ckpt-every", type=int, default=50)
    ap.add_argument("--horizon", type=int, default=100)
    ap.add_argument("--lag", type=int, default=25)
    ap.add_argument("--skip-analyze", action="store_true", help="reuse tables already in --out")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    opts = SignalOptions(lag=args.lag, horizon=args.horizon, ckpt_every=args.ckpt_every)
    report = []
    results: dict[str, dict[str, Any]] = {}
    for i, run in enumerate(args.runs):
        tables = args.out / run.name
        if not args.skip_analyze:
            run_tables(run, tables)
        res = evaluate(tables, opts)
        results[run.name] = res
        (tables / "signals.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
        report.append(markdown(run.name, res))
        for sp in res["spikes"]:
            report.append(f"stages around the spike at {sp['start']}:\n")
            report.append(stage_timeline(tables, sp["start"]))
        if i == 0 and args.img:
            write_images(tables, args.img, prefix=run.name)
    report.append(summary(results))
    text = "\n".join(report)
    (args.out / "signals.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
