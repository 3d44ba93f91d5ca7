"""The HTML report: one self-contained file (inline CSS, JS, figures) telling a run's story."""

from __future__ import annotations

from adamscope.report.demo import demo
from adamscope.report.render import write_report

__all__ = ["demo", "write_report"]
