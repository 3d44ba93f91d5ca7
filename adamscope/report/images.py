"""Figures for the report: drawn by adamscope.figures into a temp folder, inlined as small PNGs.

A figure that cannot be drawn (module missing, a table lacking, a plotting error) becomes a visible
"figure unavailable: reason" box instead of failing the whole report.
"""

from __future__ import annotations

import base64
import io
import logging
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adamscope.tables.model import Tables

log = logging.getLogger(__name__)

THUMB_WIDTH = 760  # px of the embedded PNG: sharp at ~380 CSS px (thumbnail), readable when opened
BUDGET_BYTES = 4_000_000  # all embedded figures together; past it, figures shrink then drop out


@dataclass
class Figure:
    key: str  # file stem, e.g. fig5_u_spike_embedding
    number: int | None  # paper figure number, when the name carries one
    caption: str
    data_uri: str | None = None
    width: int = 0
    height: int = 0
    error: str | None = None  # set when the figure is unavailable


_NUMBER = re.compile(r"fig(?:ure)?[_-]?(\d+)", re.IGNORECASE)


def caption_of(stem: str) -> tuple[int | None, str]:
    """Paper figure number and a readable caption from a file stem like 'fig6_r_block.0_step400'."""
    m = _NUMBER.search(stem)
    number = int(m.group(1)) if m else None
    rest = _NUMBER.sub("", stem).strip("_-")
    words = rest.replace("__", " · ").replace("_", " ").strip()
    prefix = f"Figure {number}" if number is not None else "Figure"
    return number, f"{prefix}: {words}" if words else prefix


def encode_png(path: Path, *, width: int = THUMB_WIDTH) -> tuple[str, int, int]:
    """Downscale to `width` px and quantize to a palette (plots have few colours: lossless to the
    eye and several times smaller). Returns (data URI, width, height)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGBA")
        if im.width > width:
            im = im.resize((width, round(im.height * width / im.width)), Image.Resampling.LANCZOS)
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(bg, im).convert("RGB")
        pal = flat.quantize(colors=96, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        buf = io.BytesIO()
        pal.save(buf, format="PNG", optimize=True)
        w, h = flat.size
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), w, h


def _inline(paths: Sequence[Path], budget: list[int]) -> list[Figure]:
    figs = []
    for p in paths:
        number, caption = caption_of(p.stem)
        fig = Figure(p.stem, number, caption)
        if p.suffix.lower() != ".png":
            continue
        try:
            fig.data_uri, fig.width, fig.height = encode_png(p)
            if len(fig.data_uri) > budget[0]:  # try once more, smaller
                fig.data_uri, fig.width, fig.height = encode_png(p, width=THUMB_WIDTH // 2)
        except (OSError, ValueError) as e:
            fig.error = f"cannot read {p.name}: {_reason(e)}"
        if fig.data_uri and len(fig.data_uri) > budget[0]:
            fig.data_uri, fig.error = (
                None,
                "left out: the report's size budget for figures is spent",
            )
        if fig.data_uri:
            budget[0] -= len(fig.data_uri)
        figs.append(fig)
    return figs


def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}"[:300]


def render_figures(
    tables: Tables,
    *,
    steps: Sequence[int | None] | None = None,
    layers: Sequence[str] | None = None,
    budget_bytes: int = BUDGET_BYTES,
) -> tuple[Figure, list[Figure]]:
    """Draw Figure 4 (the heatmap) and Figures 2-10 with adamscope.figures; return them inlined.

    Each figure is drawn on its own, so one failure leaves a "figure unavailable" box and the rest.
    `steps` (t1, t2, t3) and `layers` override the figures' own selection rules.

    Returns (heatmap, other figures); unavailable ones carry `error` instead of `data_uri`.
    """
    budget = [budget_bytes]
    try:
        from adamscope.figures import select
        from adamscope.figures.write import SPECS, render

        sel = select(tables, steps=steps, layers=layers)
    except Exception as e:  # noqa: BLE001 - the report goes on without figures, saying why
        log.warning("report: figures unavailable: %s", _reason(e))
        why = f"adamscope.figures could not start ({_reason(e)})"
        return Figure("heatmap", 4, "Figure 4", error=why), [Figure("figures", None, "", error=why)]
    captions = _captions(sel)
    out: dict[int, Figure] = {}
    with tempfile.TemporaryDirectory(prefix="adamscope-report-") as tmp:
        for n, spec in sorted(SPECS.items(), key=lambda kv: (kv[0] != 4, kv[0])):
            caption = captions.get(n, f"Figure {n}")
            try:
                paths = render(n, tables, sel, Path(tmp) / f"fig{n}_{spec.slug}", ("png",), dpi=110)
            except Exception as e:  # noqa: BLE001 - one broken figure must not sink the report
                log.warning("report: figure %d failed: %s", n, _reason(e))
                out[n] = Figure(f"fig{n}", n, caption, error=_reason(e))
                continue
            pngs = [p for p in paths if p.suffix == ".png"]
            fig = _inline(pngs[:1], budget)[0] if pngs else Figure(f"fig{n}", n, caption)
            fig.caption = caption
            if not pngs:
                fig.error = "nothing was drawn"
            out[n] = fig
    heat = out.pop(4, Figure("heatmap", 4, captions[4], error="not drawn"))
    return heat, [out[n] for n in sorted(out)]


def _captions(sel: Any) -> dict[int, str]:
    def pairs(ps: Sequence[tuple[str, int]]) -> str:
        return ", ".join(f"{layer} at step {step}" for layer, step in ps) or "none found"

    t, tc = sel.t, sel.t_checkpoint
    focus = sel.focus_layer or "the first layer"
    cap = {
        2: f"Figure 2: u of healthy layers at step {sel.fig2_step} "
        f"({', '.join(sel.fig2_layers) or 'none'})",
        3: f"Figure 3: bimodal u ({pairs(sel.fig3)})",
        4: "Figure 4: gradient norm per layer and step, beside the loss",
        5: f"Figure 5: u spiked at 0 ({pairs(sel.fig5)})",
        6: "Figure 6: r of the same layers and steps as Figure 5",
        7: "Figure 7: loss with t1, t2, t3 marked ("
        + (", ".join(f"{k} = {v}" for k, v in t.items() if v is not None) or "no spike found")
        + ")",
    }
    for n, key, what in (
        (8, "t1", "recovered"),
        (9, "t2", "explosion started"),
        (10, "t3", "flat"),
    ):
        when = (
            f"{key} = {t[key]} ({what}; checkpoint step {tc.get(key)})"
            if t.get(key) is not None
            else f"{key} ({what}): no such spike in this loss log"
        )
        cap[n] = f"Figure {n}: u and r of {focus} at {when}"
    return cap
