"""The `adamscope` command line (typer): app.py holds the commands, present.py their text output."""

from __future__ import annotations

from adamscope.cli.app import app, main

__all__ = ["app", "main"]
