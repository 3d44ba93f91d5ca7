"""The library surface: `import adamscope` in a notebook. The README's example runs here and its
DataFrames equal what `adamscope analyze -o` writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

import adamscope
from adamscope.cli import app

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "fixtures" / "lightning"
TABLES = ("tensors", "layers", "histograms")


def _readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("## In a notebook", 1)[1].split("```python", 1)[1].split("```", 1)[0]


def _same(a: pl.DataFrame, b: pl.DataFrame) -> None:
    # the checkpoint column holds paths relative to the analysed PATH in both
    assert a.columns == b.columns
    assert a.equals(b), (a, b)


def test_readme_notebook_example_returns_what_analyze_o_writes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = _readme_example().replace("path/to/run/", str(RUN))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    tables, again = scope["tables"], scope["again"]
    assert isinstance(tables, adamscope.Tables) and tables.path is None
    assert isinstance(scope["flagged"], pl.DataFrame)
    assert scope["info"].info.format == "lightning"
    assert (tmp_path / "report.html").read_text().lower().startswith("<!doctype html>")
    assert (tmp_path / "heatmap.png").exists()

    result = CliRunner().invoke(app, ["analyze", str(RUN), "-o", str(tmp_path / "cli"), "-q"])
    assert result.exit_code == 0, result.output
    for name in TABLES:
        written = pl.read_parquet(tmp_path / "cli" / f"{name}.parquet")
        _same(getattr(tables, name), written)
        _same(getattr(again, name), written)
    losses = tmp_path / "cli" / "losses.parquet"
    assert (tables.losses is None) == (not losses.exists())
    assert again.manifest["thresholds"] == tables.manifest["thresholds"]


def test_in_memory_analyze_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    t = adamscope.analyze(RUN / "epoch=0-step=3.ckpt")
    assert t.layers.height > 0
    assert list(tmp_path.iterdir()) == []


def test_keyword_options_reach_the_engine_and_are_checked() -> None:
    t = adamscope.analyze(RUN, dip_sample=512, suppression=0.4, gradients=False)
    assert t.tensors["dip_n"].max() <= 512
    assert t.manifest["thresholds"]["suppression"] == 0.4
    with pytest.raises(adamscope.AdamscopeError, match="unknown option 'dip_samples'"):
        adamscope.analyze(RUN, dip_samples=512)
    with pytest.raises(adamscope.AdamscopeError, match="convention 'tensorflow'"):
        adamscope.analyze(RUN, convention="tensorflow")


def test_load_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(adamscope.AdamscopeError, match=r"tensors.parquet: missing; run `adamscope"):
        adamscope.load(tmp_path)


def test_public_names_are_documented_and_importing_is_light() -> None:
    for name in adamscope.__all__:
        obj = getattr(adamscope, name)
        if name != "__version__":
            assert (obj.__doc__ or "").strip(), f"adamscope.{name} has no docstring"
    code = (
        "import sys, adamscope; print(sorted(m for m in ('torch', 'polars') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
