"""The `adamscope` command line (typer): flags -> options -> a library call; errors -> exit codes.

common.py: the app, the `command` decorator and shared options; one module per group of commands;
present.py: the text they print; progress.py: the bars.
"""

from __future__ import annotations

from adamscope.cli import analysis, forensics, outputs, repair, runs  # noqa: F401 - they register commands
from adamscope.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    app()
