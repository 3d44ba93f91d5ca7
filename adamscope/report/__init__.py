"""The HTML report: one self-contained file (inline CSS, JS, figures) that tells the story of a run."""

from __future__ import annotations

from adamscope.report.demo import demo
from adamscope.report.render import write_report

__all__ = ["demo", "write_report"]
