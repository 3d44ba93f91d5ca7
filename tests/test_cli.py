"""The command line as users meet it: README commands, one-line errors with non-zero exits, --help."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adamscope.cli import app

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_readme_opens_with_demo_and_the_ci_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert "adamscope demo" in block[0]
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = re.search(r"pytest[^\n`]*", ci).group(0)
    assert test_cmd in block[1], "README's test command must be exactly what CI runs"


def test_readme_quick_start_runs_on_a_real_run_folder(tmp_path: Path, monkeypatch) -> None:
    readme = (ROOT / "README.md").read_text()
    quick = (
        readme.split("## Quick start on your own run", 1)[1]
        .split("```bash", 1)[1]
        .split("```", 1)[0]
    )
    monkeypatch.chdir(tmp_path)
    commands = [line.split("#", 1)[0].strip() for line in quick.strip().splitlines()]
    assert len(commands) >= 5
    for cmd in commands:
        args = shlex.split(cmd.replace("path/to/run/", str(FIXTURES / "lightning")))
        assert args[0] == "adamscope"
        result = _invoke(*args[1:])
        assert result.exit_code == 0, (cmd, result.output)
    assert (tmp_path / "out" / "tensors.parquet").exists()
    assert (tmp_path / "out" / "heatmap.png").exists()
    assert (tmp_path / "report.html").read_text().lower().startswith("<!doctype html>")


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("no/such/path", "no such file or directory"),
        ("torch/sgd.pt", "SGD"),
        ("torch/model_state.pt", "optimizer"),
        ("logs", "no checkpoint found"),
    ],
)
def test_bad_input_gets_one_line_error_and_nonzero_exit(
    path: str, says: str, tmp_path: Path
) -> None:
    result = _invoke("analyze", FIXTURES / path, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 2, result.output
    lines = [x for x in result.output.splitlines() if x.startswith("adamscope: error:")]
    assert len(lines) == 1, result.output
    assert says.lower() in lines[0].lower()
    assert str(FIXTURES / path).split("/")[-1] in lines[0]  # the file is named
    assert not (tmp_path / "out" / "tensors.parquet").exists()


def test_inspect_names_the_format_and_tensors() -> None:
    result = _invoke("inspect", FIXTURES / "deepspeed" / "zero3_w2_fp32")
    assert result.exit_code == 0, result.output
    assert "format deepspeed" in result.output
    assert "fc1.weight" in result.output and "[5, 6]" in result.output


def test_help_is_fast_and_lists_every_command() -> None:
    # lazy imports: --help must not import torch, polars or matplotlib
    code = (
        "import sys; from adamscope.cli import app; "
        "assert not {'torch', 'polars', 'matplotlib'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run(
        [sys.executable, "-m", "adamscope", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for cmd in (
        "analyze",
        "inspect",
        "heatmap",
        "figures",
        "report",
        "demo",
        "simulate",
        "gradients",
        "diff",
    ):
        assert cmd in out
