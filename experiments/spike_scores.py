"""Score every signal of adamscope's tables against the spike corpus of experiments/spike_corpus.py:
hit rate, lead times and false alarms per 1,000 steps (adamscope.forensics.signals), a figure, the
corpus and the remedy outcomes.

    python -m experiments.spike_scores /tmp/spike-corpus --csv adamscope/report/spike_scores.csv \\
        --md /tmp/spike-scores.md --png docs/experiments/img/spike-scores.png

Per run: adamscope.load(OUT/<run>/mon) (every `every` steps) and adamscope.load of each
OUT/<run>/win-<s> (every step around spike s) are stacked (a step in both is taken from the
window), and the stage verdicts are re-judged over the stacked series (tables.rows.run_verdicts,
as load does for one folder). Spikes are the ones run.json records (adamscope.logs.spikes.find on
pass 1's losses).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from adamscope.forensics.signals import (  # noqa: E402
    SIGNALS,
    RunSeries,
    ScoreOptions,
    leads,
    on,
    score,
    series,
)


def run_layers(root: Path) -> pl.DataFrame:
    """The layers table of one run: pass 1 and its spike windows, stacked and re-judged."""
    import adamscope
    from adamscope.config import StageThresholds
    from adamscope.tables.rows import run_verdicts

    wins = [adamscope.load(w).layers for w in sorted(root.glob("win-*"))]
    base = adamscope.load(root / "mon").layers
    dense = pl.concat(wins, how="diagonal_relaxed") if wins else base.clear()
    dense = dense.unique(["step", "layer"], keep="first")
    base = base.join(dense.select("step", "layer"), on=["step", "layer"], how="anti")
    both = pl.concat([base, dense], how="diagonal_relaxed").sort("step", "layer")
    return run_verdicts(both, key="layer", thresholds=StageThresholds())


def load_corpus(out: Path) -> list[dict[str, Any]]:
    runs = []
    for rj in sorted(out.glob("*/run.json")):
        info = json.loads(rj.read_text())
        info["layers"] = run_layers(rj.parent)
        runs.append(info)
    if not runs:
        raise SystemExit(f"{out}: no */run.json; run experiments/spike_corpus.py first")
    return runs


def spans(info: dict[str, Any]) -> tuple[tuple[int, int], ...]:
    last = info["steps_run"]
    return tuple((s["start"], s["end"] if s["end"] is not None else last) for s in info["spikes"])


def run_series(runs: list[dict[str, Any]], opt: ScoreOptions) -> dict[str, list[RunSeries]]:
    """signal name -> one RunSeries per run."""
    out: dict[str, list[RunSeries]] = {}
    for sig in SIGNALS:
        out[sig.name] = []
        for info in runs:
            sr = series(info["layers"], sig, options=opt)
            out[sig.name].append(
                RunSeries(
                    run=info["run"],
                    steps=sr["step"].to_numpy(),
                    values=sr["value"].to_numpy().astype(np.float64),
                    spikes=spans(info),
                    n_steps=info["steps_run"],
                    control=bool(info["control"]),
                )
            )
    return out


LATE = 30  # from this step on, every signal has its trailing baseline (3 periodic checks)


def score_all(by_signal: dict[str, list[RunSeries]], opt: ScoreOptions) -> list[dict[str, Any]]:
    """score() per signal, plus the hits among spikes starting at step >= LATE (hits_late)."""
    rows = []
    for sig in SIGNALS:
        runs = by_signal[sig.name]
        got = score(runs, sig.thresholds, direction=sig.direction, options=opt)
        late = [replace(r, spikes=tuple(x for x in r.spikes if x[0] >= LATE)) for r in runs]
        got_late = score(late, sig.thresholds, direction=sig.direction, options=opt)
        for r, rl in zip(got, got_late, strict=True):
            rows.append(
                {
                    "signal": sig.name,
                    "direction": sig.direction,
                    **r,
                    "hits_late": rl["hits"],
                    "spikes_late": rl["spikes"],
                }
            )
    return rows


def per_spike_md(by_signal: dict[str, list[RunSeries]], opt: ScoreOptions) -> str:
    """Lead time of each signal (at its middle threshold) before each spike; '–' a miss, '≥lead'
    on from the window's first step."""
    first = next(iter(by_signal.values()))
    heads = [f"{r.run} @{s}" for r in first for s, _ in r.spikes]
    if not heads:
        return "(no spikes)\n"
    out = ["| signal (threshold) | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for sig in SIGNALS:
        thr = sig.thresholds[(len(sig.thresholds) - 1) // 2]
        cells = []
        for r in by_signal[sig.name]:
            got = leads(r, on(r.values, thr, sig.direction), opt)
            cells += ["–" if x is None else f"≥{x}" if x == opt.lead else str(x) for x in got]
        op = ">" if sig.direction == "above" else "<"
        out.append(f"| {sig.name} ({op} {thr:g}) | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _f(x: float, nd: int = 1) -> str:
    return "–" if x != x else f"{x:.{nd}f}"


def scores_md(rows: list[dict[str, Any]], opt: ScoreOptions) -> str:
    head = (
        f"Lead window {opt.lead} steps; false alarms on periodic checks (every {opt.every}), once "
        f"per {opt.refractory} steps, none in [start - {opt.lead}, end + {opt.after}] of a spike.\n\n"
        f"| signal | on when | hits / spikes | hit rate | hits / spikes from step {LATE} | "
        "lead median [q25, q75] | leads | FA/1k controls | FA/1k away from spikes | "
        "FA/1k pooled |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        op = ">" if r["direction"] == "above" else "<"
        lead = (
            f"{_f(r['lead_median'], 0)} [{_f(r['lead_q25'], 0)}, {_f(r['lead_q75'], 0)}]"
            if r["hits"]
            else "–"
        )
        lines.append(
            f"| {r['signal']} | {op} {r['threshold']:g} | {r['hits']}/{r['spikes']} | "
            f"{_f(r['hit_rate'], 2)} | {r['hits_late']}/{r['spikes_late']} | {lead} | {', '.join(map(str, r['leads'])) or '–'} | "
            f"{_f(r['fa_per_1k_control'])} | {_f(r['fa_per_1k_away'])} | {_f(r['fa_per_1k'])} |"
        )
    return head + "\n".join(lines) + "\n"


def corpus_md(runs: list[dict[str, Any]]) -> str:
    out = [
        "| run | setting | lr | b2 | eps | warm-up | width | steps | final loss | spikes: start "
        "(peak, end, z) | replay = pass 1 | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i in runs:
        c = i["config"]
        sp = "; ".join(
            f"{s['start']} ({s['peak']}, {s['end']}, {s['z']:.1f})" for s in i["spikes"]
        ) or ("none (control)" if i["control"] else "none")
        rep = (
            ", ".join(
                "yes" if w["reproduced"] else f"no ({w['max_abs_loss_diff']:.1e})"
                for w in i["windows"]
            )
            or "–"
        )
        out.append(
            f"| {i['run']} | {i['setting']} | {c['lr']:g} | {c['beta2']:g} | {c['eps']:g} | "
            f"{c['warmup']} | L{c['n_layer']} d{c['n_embd']} B{c['batch_size']} | "
            f"{i['steps_run']} | {i['final_loss']:.3f} | {sp} | {rep} | {i['seconds']:.0f} |"
        )
    return "\n".join(out) + "\n"


def remedy_md(runs: list[dict[str, Any]]) -> str:
    out = [
        "| run | spike s | original peak loss | flagged layers at s - 2 (the remedy acts after "
        "that step) | reset_flagged | reset_all | eps_low |",
        "|---|---|---|---|---|---|---|",
    ]
    for i in runs:
        peaks = {s["start"]: s["peak_value"] for s in i["spikes"]}
        for r in i["remedies"]:
            if r["spike"] not in peaks:
                continue
            cells = []
            for rem in ("reset_flagged", "reset_all", "eps_low"):
                x = r[rem]
                if not x["applied"]:
                    cells.append("nothing flagged")
                    continue
                word = "diverged" if x["diverged"] else ("stays" if x["spike_remains"] else "gone")
                cells.append(f"{word} (max loss {x['max_loss']:.2f})")
            flagged = ", ".join(r["flagged"]) or "none"
            out.append(
                f"| {i['run']} | {r['spike']} | {peaks[r['spike']]:.2f} | {flagged} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(out) + "\n"


def figure(rows: list[dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=90)
    names = list(dict.fromkeys(r["signal"] for r in rows))
    cmap = plt.get_cmap("tab20")
    marks = "o s ^ v D P X * h".split()
    for k, name in enumerate(names):
        pts = [(r["fa_per_1k"], r["hit_rate"]) for r in rows if r["signal"] == name]
        pts = sorted(p for p in pts if p[0] == p[0] and p[1] == p[1])
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker=marks[k % len(marks)], color=cmap(k % 20), label=name, lw=1.2, ms=5)
    ax.set_xlabel("false alarms per 1,000 steps (controls + spiking runs away from spikes)")
    ax.set_ylabel("share of spikes preceded (lead window)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlim(left=-1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("Does a signal see a loss spike coming? (one point per threshold)", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", type=Path, help="the corpus folder of experiments/spike_corpus.py")
    ap.add_argument("--csv", type=Path, default=None)
    ap.add_argument("--md", type=Path, default=None)
    ap.add_argument("--png", type=Path, default=None)
    args = ap.parse_args()
    runs = load_corpus(args.out)
    every = runs[0]["options"]["every"]
    opt = ScoreOptions(lead=runs[0]["options"]["lead"], every=every)
    by_signal = run_series(runs, opt)
    rows = score_all(by_signal, opt)
    n_spikes = sum(len(i["spikes"]) for i in runs)
    steps = sum(i["steps_run"] for i in runs)
    cpu = sum(i["seconds"] for i in runs) / 60
    text = (
        f"## Corpus: {len(runs)} runs, {steps} steps, {n_spikes} spikes, "
        f"{sum(bool(i['control']) for i in runs)} controls, {cpu:.1f} CPU minutes\n\n"
        + corpus_md(runs)
        + "\n## Lead time per spike (steps)\n\n"
        + per_spike_md(by_signal, opt)
        + "\n## Scores\n\n"
        + scores_md(rows, opt)
        + "\n## Remedies\n\n"
        + remedy_md(runs)
    )
    print(text)
    if args.md:
        args.md.write_text(text)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        flat = [{**r, "leads": " ".join(map(str, r["leads"]))} for r in rows]
        pl.DataFrame(flat).write_csv(args.csv)
    if args.png:
        figure(rows, args.png)


if __name__ == "__main__":
    main()
