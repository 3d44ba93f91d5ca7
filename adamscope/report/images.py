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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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
    """Downscale to `width` px and quantize to a palette: plots have few colours, so this is lossless
    to the eye and ~5x smaller. Returns (data URI, width, height)."""
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


def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}"[:300]


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


def _guarded(what: str, fn: Callable[[], list[Path]]) -> tuple[list[Path], str | None]:
    try:
        return list(fn()), None
    except ImportError as e:
        return [], f"adamscope.figures is not available ({_reason(e)})"
    except Exception as e:  # noqa: BLE001 - a broken figure must not sink the whole report
        log.warning("report: %s failed: %s", what, _reason(e))
        return [], _reason(e)


def render_figures(
    tables_dir: Path,
    *,
    steps: Sequence[int] | None,
    layers: Sequence[str] | None,
    budget_bytes: int = BUDGET_BYTES,
) -> tuple[Figure, list[Figure]]:
    """Draw the heatmap and Figures 2-10 for the given steps/layers; return them inlined.

    Returns (heatmap, figures); unavailable ones carry `error` instead of `data_uri`.
    """
    budget = [budget_bytes]
    with tempfile.TemporaryDirectory(prefix="adamscope-report-") as tmp:
        tmpdir = Path(tmp)

        def heat() -> list[Path]:
            from adamscope.figures import write_heatmap

            out = write_heatmap(tables_dir, tmpdir / "heatmap.png")
            return [Path(out)] if out else []

        def figs() -> list[Path]:
            from adamscope.figures import write_figures

            return write_figures(
                tmpdir / "figs",
                tables_dir,
                steps=list(steps) if steps else None,
                layers=list(layers) if layers else None,
                formats=("png",),
            )

        heat_paths, heat_err = _guarded("heatmap", heat)
        heat_figs = _inline(heat_paths[:1], budget)
        heatmap = (
            heat_figs[0]
            if heat_figs
            else Figure("heatmap", 4, "Figure 4: heatmap", error=heat_err or "nothing was drawn")
        )
        heatmap.caption = "Figure 4: gradient norm per layer and step, with the loss"
        fig_paths, fig_err = _guarded("figures", figs)
        inlined = _inline(sorted(fig_paths, key=_order), budget)
        if fig_err:
            inlined.append(Figure("figures", None, "Figures 2-10", error=fig_err))
        elif not inlined:
            inlined.append(Figure("figures", None, "Figures 2-10", error="no figure was drawn"))
    return heatmap, inlined


def _order(p: Path) -> tuple[int, str]:
    number, _ = caption_of(p.stem)
    return (number if number is not None else 99, p.stem)
