"""The report in headless Chromium with networking off: no console errors, no network requests, the
layer table sorts, filters and pages, dark mode and print styles apply; screenshots for the docs.

Set ADAMSCOPE_SCREENSHOTS=docs/img to refresh docs/img/report.png and report-dark.png.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import polars as pl
import pytest
from cdp import Browser
from synth import make_tables

from adamscope.report import write_report

ERROR_EVENTS = ("Runtime.exceptionThrown",)


def problems(b: Browser) -> list[str]:
    """Console errors/warnings, uncaught exceptions and log entries of level error."""
    out = []
    for ev in b.events:
        m, p = ev.get("method"), ev.get("params", {})
        if m in ERROR_EVENTS:
            out.append(str(p.get("exceptionDetails", p))[:300])
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
            out.append(str(p.get("args"))[:300])
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
            out.append(p["entry"].get("text", "")[:300])
    return out


def requests(b: Browser) -> list[str]:
    return [
        ev["params"]["request"]["url"]
        for ev in b.events
        if ev.get("method") == "Network.requestWillBeSent"
    ]


def column(b: Browser, index: int) -> list[str]:
    return b.eval(
        f"[...document.querySelectorAll('#layer-table tbody tr')].map(r => r.cells[{index}].textContent)"
    )


def click_header(b: Browser, label: str) -> None:
    """A real mouse click (Input domain) in the middle of the header button labelled `label`."""
    box = b.eval(
        "(() => { const btn = [...document.querySelectorAll('#layer-table th button')]"
        f".find(x => x.textContent === {label!r}); btn.scrollIntoView({{block: 'center'}});"
        " const r = btn.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
    )
    b.click(*box)


def test_opens_offline_without_errors_and_sorts(
    browser: Browser, small_report: Path, small_tables: Path, tmp_path: Path
) -> None:
    url = small_report.resolve().as_uri()
    browser.navigate(url)
    browser.drain(0.5)
    assert problems(browser) == []
    urls = requests(browser)
    assert url in urls
    assert all(u == url or u.startswith("data:") for u in urls), urls

    # default checkpoint: step 600 (first primed); truth from layers.parquet
    truth = pl.read_parquet(small_tables / "layers.parquet").filter(pl.col("step") == 600)
    assert column(browser, 0) == truth.sort("depth")["layer"].to_list()

    click_header(browser, "grad_rms")  # numbers sort largest first on the first click
    want = truth.sort("grad_rms", descending=True)["layer"].to_list()
    assert column(browser, 0) == want
    assert browser.eval("document.querySelectorAll('th[aria-sort=descending]').length") == 1
    click_header(browser, "grad_rms")
    assert column(browser, 0) == want[::-1]

    click_header(browser, "stage")  # severity order, not alphabetical
    assert column(browser, 2)[:2] == ["primed", "primed"]

    # the filter box keeps the rows whose layer name contains the text
    browser.eval(
        "(() => { const f = document.getElementById('filter'); f.value = 'block';"
        " f.dispatchEvent(new Event('input')); })()"
    )
    assert sorted(column(browser, 0)) == ["block.0", "block.1", "block.2", "block.3"]
    browser.drain(0.2)
    assert problems(browser) == []
    assert all(u == url or u.startswith("data:") for u in requests(browser))


def test_pages_and_switches_checkpoint(browser: Browser, tmp_path: Path) -> None:
    tables = make_tables(tmp_path / "t", n_layers=120, n_ckpts=6, histograms=False)
    html = write_report(tables, tmp_path / "r.html", figures=False)
    browser.navigate(html.resolve().as_uri())
    assert len(column(browser, 0)) == 50
    assert browser.eval("document.getElementById('page-info').textContent") == "1\u201350 of 120"
    browser.eval("document.getElementById('next').click()")
    browser.eval("document.getElementById('next').click()")
    assert column(browser, 0)[-1] == "head"
    assert browser.eval("document.getElementById('next').disabled") is True
    n = browser.eval("document.getElementById('ck-select').options.length")
    assert n >= 2
    browser.eval(
        "(() => { const s = document.getElementById('ck-select'); s.value = String(s.options.length - 1);"
        " s.dispatchEvent(new Event('change')); })()"
    )
    assert browser.eval("document.getElementById('page-info').textContent").endswith("of 120")
    assert problems(browser) == []


def _luminance(css_rgb: str) -> float:
    r, g, b = (int(x) for x in css_rgb[css_rgb.index("(") + 1 : -1].split(",")[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def test_dark_mode_print_and_screenshots(
    browser: Browser, demo_report: Path, tmp_path: Path
) -> None:
    """On the demo run's report (the real simulate -> analyze pipeline): the docs' screenshots."""
    browser.navigate(demo_report.resolve().as_uri())
    browser.drain(0.3)
    bg = "getComputedStyle(document.body).backgroundColor"
    assert _luminance(browser.eval(bg)) > 0.8
    shots = tmp_path / "shots"
    browser.screenshot(shots / "report.png")
    browser.eval("document.getElementById('timeline').scrollIntoView()")
    browser.screenshot(shots / "report-timeline.png")
    browser.eval("window.scrollTo(0, 0)")

    dark = {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
    browser.send("Emulation.setEmulatedMedia", dark)
    assert _luminance(browser.eval(bg)) < 0.2
    browser.screenshot(shots / "report-dark.png")

    browser.send("Emulation.setEmulatedMedia", {"media": "print"})
    nav = "getComputedStyle(document.querySelector('nav.toc')).display"
    assert browser.eval(nav) == "none"
    assert _luminance(browser.eval(bg)) > 0.9  # print is always light
    pdf = browser.send("Page.printToPDF", {})["data"]
    assert len(pdf) > 10_000
    for shot in ("report.png", "report-dark.png", "report-timeline.png"):
        assert (shots / shot).stat().st_size > 20_000
    if target := os.environ.get("ADAMSCOPE_SCREENSHOTS"):
        for shot in ("report.png", "report-dark.png", "report-timeline.png"):
            Path(target).mkdir(parents=True, exist_ok=True)
            shutil.copy(shots / shot, Path(target) / shot)
    assert problems(browser) == []


@pytest.mark.parametrize("stage", ["primed", "unstable"])
def test_stage_labels_readable_without_colour(
    browser: Browser, small_report: Path, stage: str
) -> None:
    """Each stage shows its name as text (table, legend) and its own fill pattern."""
    browser.navigate(small_report.resolve().as_uri())
    legend = browser.eval("document.querySelector('.legend').textContent")
    assert f"{stage}:" in legend
    fill = browser.eval(f"getComputedStyle(document.querySelector('svg.timeline .s-{stage}')).fill")
    assert f"#pat-{stage}" in fill
