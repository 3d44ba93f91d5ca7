"""Assemble the single-file HTML report: template, inline CSS/JS, sections drawn from the tables."""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import tempfile
import time
from html import escape
from importlib import resources
from pathlib import Path

from adamscope._version import __version__
from adamscope.report import advice, images, model, svg
from adamscope.report.advice import fmt
from adamscope.tables.model import Tables, as_tables

log = logging.getLogger(__name__)

MAX_LAYERS_FULL = 64
MAX_VERDICT_ROWS = 20


def write_report(
    tables: Tables | Path,
    out_html: Path,
    *,
    checkpoint: str | int | None = None,
    max_layers_full: int = MAX_LAYERS_FULL,
    figures: bool = True,
) -> Path:
    """Write one self-contained HTML report (inline CSS, JS and figures; no network use) of a run.

    Args:
        tables: a `Tables` (adamscope.analyze / adamscope.load) or the folder `adamscope analyze`
            wrote (tensors/layers.parquet, manifest.json, optionally histograms and losses).
        out_html: the file to write (parent folders are created).
        checkpoint: the layer table's default checkpoint, by path (as in the tables) or step;
            default: the first with a primed/unstable layer, else the last.
        max_layers_full: up to this many layers the stage map draws every layer; beyond it, only
            the layers that ever leave healthy (the others are counted).
        figures: draw the heatmap and Figures 2-10 (False: leave them out, e.g. for speed).

    Returns:
        `out_html`.

    Raises:
        AdamscopeError: the tables are missing or unreadable, or `checkpoint` names no checkpoint.
    """
    t0 = time.perf_counter()
    run = model.run_data(as_tables(tables))
    chosen = model.pick_checkpoint(run, checkpoint)
    thresholds = run.manifest.get("thresholds", {})
    verdict = advice.verdict(run, thresholds=thresholds)
    keys = model.key_checkpoints(run, chosen)
    if figures:
        heat, figs = images.render_figures(run.tables)
    else:
        heat = images.Figure(
            "heatmap", 4, "Figure 4", error="figures were turned off (figures=False)"
        )
        figs = [images.Figure("figures", None, "Figures 2-10", error="figures were turned off")]
    fill = {
        "version": escape(__version__),
        "run_name": escape(_run_name(run)),
        "subtitle": escape(_subtitle(run)),
        "css": _asset("report.css"),
        "js": _asset("report.js"),
        "defs": svg.pattern_defs(),
        "verdict": _verdict_html(verdict),
        "summary": _summary_html(run),
        "timeline": _timeline_html(run, max_layers_full),
        "heatmap": _figure_html(heat, wide=True),
        "figures": _figures_html(figs),
        "layers_note": escape(_layers_note(run, chosen, keys)),
        "reproduce": _reproduce_html(run),
        "table_json": _table_json(run, keys, chosen),
    }
    html = _asset("report.html")
    for k, v in fill.items():
        html = html.replace("{{" + k + "}}", v)
    out_html = Path(out_html)
    _write_atomic(out_html, html)
    log.info("report: %s (%.1f MB, %.1f s)", out_html, len(html) / 1e6, time.perf_counter() - t0)
    return out_html


def _asset(name: str) -> str:
    return resources.files("adamscope.report").joinpath(name).read_text(encoding="utf-8")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _run_name(run: model.RunData) -> str:
    path = run.manifest.get("inputs", {}).get("path")
    if path:
        return Path(path).name
    return run.tables_dir.resolve().name if run.tables_dir else "adamscope run"


def _subtitle(run: model.RunData) -> str:
    made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    c = run.checkpoints
    return (
        f"{len(c)} checkpoint{'s' * (len(c) != 1)}, steps {c[0].step}-{c[-1].step} · "
        f"report by adamscope {__version__} on {made}"
    )


def _verdict_html(v: advice.Verdict) -> str:
    out = [
        f'<div class="verdict lvl-{v.level}" role="status">'
        f'<span class="badge">{v.level.upper()}</span>'
        f'<span class="headline">{escape(v.headline)}</span>'
    ]
    if v.details:
        out.append("<ul>" + "".join(f"<li>{escape(d)}</li>" for d in v.details) + "</ul>")
    out.append("</div>")
    if v.layers:
        rows = "".join(
            f"<tr><td>{escape(r['layer'])}</td><td class='n'>{fmt(r['primed'])}</td>"
            f"<td class='n'>{fmt(r['unstable'])}</td><td>{_stage_badge(r['now'])}</td>"
            f"<td class='n'>{fmt(r['grad_rms'])}</td><td class='n'>{fmt(r['dip_r'])}</td>"
            f"<td class='n'>{fmt(r['suppression'])}</td><td class='n'>{fmt(r.get('rho_hat'))}</td>"
            f"<td class='n'>{fmt(r.get('null_dip_q99'))}</td><td>{escape(r.get('why') or '')}</td></tr>"
            for r in v.layers[:MAX_VERDICT_ROWS]
        )
        more = len(v.layers) - MAX_VERDICT_ROWS
        out.append(
            "<h3>Layers that reached primed or unstable</h3><div class='scroll'><table>"
            "<thead><tr><th>layer</th><th class='n'>first primed (step)</th>"
            "<th class='n'>first unstable (step)</th><th>stage at last checkpoint</th>"
            "<th class='n'>grad_rms when flagged</th><th class='n'>dip(r)</th>"
            "<th class='n'>suppression</th><th class='n'>rho_hat</th><th class='n'>null's dip "
            f"(99%)</th><th>why (when flagged)</th></tr></thead><tbody>{rows}</tbody></table></div>"
            + (f"<p class='muted'>and {more} more: see the layer table.</p>" if more > 0 else "")
        )
    if v.remedies:
        cards = "".join(
            f"<div class='remedy'><h3>{escape(t)}</h3><p>{escape(x)}</p></div>"
            for t, x in v.remedies
        )
        out.append(
            "<h3>What the theory says to do (Molybog et al. 2023, Section 7.1)</h3>"
            f"<div class='remedies'>{cards}</div>"
        )
    return "".join(out)


def _stage_badge(stage: str | None) -> str:
    if stage is None:
        return "not judged"
    return (
        '<span class="stage"><svg width="16" height="11" aria-hidden="true">'
        f'<rect class="s-{stage}" width="16" height="11"/></svg>{escape(stage)}</span>'
    )


def _summary_html(run: model.RunData) -> str:
    s = model.summary(run)
    m = run.manifest
    groups = "<br>".join(
        f"betas ({g['beta1']:g}, {g['beta2']:g}), eps {fmt(g['eps'])}, weight decay "
        f"{g['weight_decay']:g}: {g['tensors']} tensors"
        for g in s["groups"][:6]
    )
    lo, hi = s["lr"]
    lr = "n/a" if lo is None else (f"{lo:g}" if lo == hi else f"{lo:g} to {hi:g} (as stored)")
    conv = m.get("conventions", {})
    thr = m.get("thresholds", {})
    items = [
        ("input", escape(str(m.get("inputs", {}).get("path", run.tables_dir)))),
        (
            "checkpoints",
            f"{s['checkpoints']}: steps {s['first_step']} to {s['last_step']}"
            + (f", about every {s['interval']} steps" if s["interval"] else ""),
        ),
        (
            "model",
            f"{fmt(s['parameters'])} parameters in {s['tensors']} tensors, {s['layers']} layers",
        ),
        ("optimizer state dtype", escape(", ".join(s["dtypes"]) or "n/a")),
        ("optimizer groups", groups or "n/a"),
        ("learning rate", escape(lr)),
        ("u", escape(conv.get("u", "n/a"))),
        ("r", escape(conv.get("r", "n/a"))),
        (
            "stage thresholds",
            escape(", ".join(f"{k} {v}" for k, v in thr.items()) or "n/a (no manifest)"),
        ),
        (
            "loss log",
            f"{s['loss_steps']} steps, {s['spikes']} spike{'s' * (s['spikes'] != 1)} "
            "(robust z-score against a trailing window; docs/figures.md)"
            if s["loss_steps"]
            else "none (no losses.parquet beside the tables)",
        ),
    ]
    return '<dl class="kv">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _timeline_html(run: model.RunData, max_layers_full: int) -> str:
    return (
        '<p class="muted">Top: training loss, spikes marked. Middle: the worst stage over all '
        "layers at each checkpoint. Bottom: each layer's stage over time (hover for steps).</p>"
        + svg.timeline(run, max_layers_full=max_layers_full)
        + svg.legend()
    )


def _figure_html(fig: images.Figure, *, wide: bool = False) -> str:
    if fig.data_uri is None:
        return (
            f'<div class="unavailable" role="note"><b>figure unavailable:</b> '
            f"{escape(fig.caption)}: {escape(fig.error or 'unknown reason')}</div>"
        )
    cls = ' class="wide"' if wide else (' class="span2"' if fig.width > 2.2 * fig.height else "")
    return (
        f'<figure{cls}><img src="{fig.data_uri}" width="{fig.width}" height="{fig.height}" '
        f'alt="{escape(fig.caption)}"><figcaption>{escape(fig.caption)} '
        "<span class='noprint'>(click to enlarge)</span></figcaption></figure>"
    )


def _figures_html(figs: list[images.Figure]) -> str:
    ok = [f for f in figs if f.data_uri]
    bad = [f for f in figs if not f.data_uri]
    out = ""
    if ok:
        out += '<div class="figgrid">' + "".join(_figure_html(f) for f in ok) + "</div>"
    out += "".join(_figure_html(f) for f in bad)
    return out


def _layers_note(run: model.RunData, chosen: model.Checkpoint, keys: list[model.Checkpoint]) -> str:
    return (
        f"{len(run.histories)} layers at step {chosen.step} ({chosen.name}); pick another of "
        f"{len(keys)} key checkpoints above the table. Click a column header to sort. "
        "grad_rms / eps below 1 means eps dominates the update's denominator."
    )


def _table_json(run: model.RunData, keys: list[model.Checkpoint], chosen: model.Checkpoint) -> str:
    tags: dict[int, list[str]] = {}
    for stage in ("vanishing", "primed", "unstable"):
        firsts = [h.first[stage] for h in run.histories if stage in h.first]
        if firsts:
            tags.setdefault(min(firsts), []).append(f"first {stage}")
    for k, sp in enumerate(run.spikes, 1):
        if (c := model.checkpoint_before(run, sp.start)) is not None:
            tags.setdefault(c.index, []).append(f"before spike {k}")
    tags.setdefault(run.checkpoints[-1].index, []).append("last")
    cks = [
        {
            "label": f"step {c.step} ({c.name})"
            + (f": {', '.join(tags[c.index])}" if c.index in tags else ""),
            "rows": model.layer_rows(run, c),
        }
        for c in keys
    ]
    data = {
        "columns": model.TABLE_COLUMNS,
        "checkpoints": cks,
        "default": keys.index(chosen),
    }
    # "</" inside a <script> block would end it early
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/")


def _reproduce_html(run: model.RunData) -> str:
    m = run.manifest
    opts = m.get("options", {})
    src = m.get("inputs", {}).get("path", "PATH")
    out = str(run.tables_dir or "OUT")
    cmd = ["adamscope", "analyze", src, "-o", out]
    for flag, key in (
        ("--convention", "convention"),
        ("--chunk", "chunk_elems"),
        ("--dip-sample", "dip_sample"),
        ("--bins", "hist_bins"),
    ):
        if key in opts:
            cmd += [flag, str(opts[key])]
    reader = opts.get("reader", {})
    if reader.get("model"):
        cmd += ["--model", str(reader["model"])]
    if opts.get("tensor_histograms") is False:
        cmd.append("--no-tensor-histograms")
    lines = [shlex.join(cmd), shlex.join(["adamscope", "report", out, "-o", "report.html"])]
    ver = m.get("version", "unknown")
    env_text = ", ".join(f"{k} {v}" for k, v in m.get("environment", {}).items())
    ckpts = m.get("inputs", {}).get("checkpoints", [])
    ck_list = "".join(
        f"<li><code>{escape(c['path'])}</code> ({escape(str(c.get('format')))})</li>" for c in ckpts
    )
    sources = []
    if run.losses is not None and "source" in run.losses.columns:
        sources = [s for s in run.losses["source"].unique().to_list() if s]
    manifest = escape(json.dumps(m, indent=2, default=str)) if m else "no manifest.json found"
    tables_at = str(run.tables_dir.resolve()) if run.tables_dir else "in memory (not written)"
    return (
        "<pre><code>" + escape("\n".join(lines)) + "</code></pre>"
        f'<dl class="kv"><dt>tables written by</dt><dd>adamscope {escape(str(ver))}, '
        f"{escape(str(m.get('created', 'n/a')))}</dd>"
        f"<dt>environment</dt><dd>{escape(env_text or 'n/a')}</dd>"
        f"<dt>report written by</dt><dd>adamscope {escape(__version__)}, Python "
        f"{escape(platform.python_version())}</dd>"
        f"<dt>tables</dt><dd><code>{escape(tables_at)}</code></dd>"
        f"<dt>loss log</dt><dd>{escape(', '.join(sources) or 'none')}</dd></dl>"
        f"<details><summary>{len(ckpts)} input checkpoints</summary><ul>{ck_list}</ul></details>"
        f"<details><summary>manifest.json</summary><pre><code>{manifest}</code></pre></details>"
    )
