"""The report file itself: self-contained, every section present, graceful without figures or losses,
and small and quick at 500 layers x 100 checkpoints."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from synth import Walk, make_tables

from adamscope.report import write_report

SECTIONS = ("verdict", "summary", "timeline", "heatmap", "figures", "layers", "reproduce")


class _Refs(HTMLParser):
    """Every attribute that could make a browser fetch something, and the tags that fetch."""

    URL_ATTRS = {"src", "href", "xlink:href", "action", "poster", "srcset", "data", "formaction"}

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for k, v in attrs:
            if k in self.URL_ATTRS and v is not None:
                self.refs.append((tag, k, v))
            if k == "id" and v:
                self.ids.add(v)


def parse(path: Path) -> tuple[_Refs, str]:
    text = path.read_text(encoding="utf-8")
    p = _Refs()
    p.feed(text)
    return p, text


def test_self_contained(small_report: Path) -> None:
    p, text = parse(small_report)
    assert p.refs, "expected at least the inline figures and the section links"
    for tag, attr, value in p.refs:
        assert value.startswith(("#", "data:")), f"<{tag} {attr}={value[:60]!r}> fetches something"
    assert not {"link", "iframe", "object", "embed", "base"} & set(p.tags)
    assert all(u.startswith("#") for u in re.findall(r"url\(([^)]*)\)", text))
    assert "default-src 'none'" in text  # the CSP forbids any fetch even if something slipped in
    assert "{{" not in text, "a template placeholder was left unfilled"
    assert set(SECTIONS) <= p.ids


def test_table_data_is_the_default_checkpoint(small_report: Path) -> None:
    _, text = parse(small_report)
    blob = re.search(r'<script type="application/json" id="table-data">(.*?)</script>', text, re.S)
    data = json.loads(blob.group(1))
    default = data["checkpoints"][data["default"]]
    assert default["label"].startswith("step 600 (step_600)")  # first primed checkpoint (synth)
    assert "first primed" in default["label"]
    assert len(default["rows"]) == 6


def test_figures_inlined_when_available(small_report: Path) -> None:
    p, _ = parse(small_report)
    imgs = [v for tag, k, v in p.refs if tag == "img" and v.startswith("data:image/png;base64,")]
    assert len(imgs) >= 9  # heatmap + Figures 2, 3, 5-10


def test_degrades_without_figures_and_losses(
    small_tables: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tables = tmp_path / "tables"
    shutil.copytree(small_tables, tables)
    (tables / "losses.parquet").unlink()
    import adamscope.figures

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("simulated plotting failure")

    monkeypatch.setattr(adamscope.figures, "select", broken)
    out = write_report(tables, tmp_path / "r.html")
    text = out.read_text()
    assert text.count("figure unavailable:") == 2  # heatmap box + Figures 2-10 box
    assert "simulated plotting failure" in text
    assert "no loss log" in text
    assert "UNSTABLE" in text  # the verdict does not need losses or figures


def test_one_broken_figure_leaves_the_others(
    small_tables: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adamscope.figures import write

    real = write.render

    def flaky(n: int, *args: object, **kwargs: object) -> list[Path]:
        if n == 6:
            raise ValueError("figure 6 exploded")
        return real(n, *args, **kwargs)

    monkeypatch.setattr(write, "render", flaky)
    text = write_report(small_tables, tmp_path / "r.html").read_text()
    assert text.count("figure unavailable:") == 1
    assert "figure 6 exploded" in text and "Figure 6" in text


SLOW = pytest.mark.skipif(
    not os.environ.get("ADAMSCOPE_SLOW_TESTS"),
    reason="20-40 s (Figure 4 on 500 x 100); set ADAMSCOPE_SLOW_TESTS=1",
)


@pytest.mark.parametrize(
    "with_figures",
    [False, pytest.param(True, marks=[pytest.mark.slow, SLOW])],
    ids=["tables", "tables+figures"],
)
def test_scales_to_500_layers_100_checkpoints(tmp_path: Path, with_figures: bool) -> None:
    tables = make_tables(
        tmp_path / "big",
        n_layers=500,
        n_ckpts=100,
        n_affected=40,
        walk=Walk(vanishing=30, primed=50, unstable=70, recover=85),
        histograms=with_figures,
    )
    t0 = time.perf_counter()
    out = write_report(tables, tmp_path / "big.html", figures=with_figures)
    elapsed = time.perf_counter() - t0
    size = out.stat().st_size
    # loose bounds: single-digit MB, and the renderer's own work (no figures) in seconds
    assert size < 9e6, f"{size / 1e6:.1f} MB"
    assert elapsed < (120 if with_figures else 20), f"{elapsed:.1f} s"
    p, text = parse(out)
    assert "+ 460 layers healthy" in text  # folded rows: 40 affected layers drawn
    blob = re.search(r'id="table-data">(.*?)</script>', text, re.S).group(1)
    data = json.loads(blob)
    assert all(len(ck["rows"]) == 500 for ck in data["checkpoints"])
    assert len(data["checkpoints"]) <= 8
