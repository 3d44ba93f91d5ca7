"""`adamscope demo`: simulate a small run that walks the stages, analyse it, write its report."""

from __future__ import annotations

import logging
from pathlib import Path

from adamscope.errors import AdamscopeError

log = logging.getLogger(__name__)


def demo(out_dir: Path, *, seed: int = 0) -> Path:
    """Run simulate -> analyze -> logs -> figures -> report under `out_dir`; return the HTML path.

    Layout: `out_dir/run` (checkpoints + train_log.jsonl), `out_dir/tables` (parquet + manifest),
    `out_dir/report.html`. Takes seconds on a laptop CPU.

    Raises:
        AdamscopeError: `out_dir/run` already holds checkpoints (choose an empty folder).
    """
    from adamscope.api import AnalyzeOptions, analyze
    from adamscope.logs import write_logs
    from adamscope.report.render import write_report
    from adamscope.simulate import simulate

    out_dir = Path(out_dir)
    run_dir = out_dir / "run"
    tables = out_dir / "tables"
    if run_dir.exists() and any(run_dir.glob("step_*")):
        raise AdamscopeError(f"{run_dir}: already holds a simulated run; give demo an empty folder")
    log.info("demo: simulating a run into %s", run_dir)
    simulate(run_dir, seed=seed)
    analyze(run_dir, options=AnalyzeOptions(out=tables))
    write_logs(tables, run_dir / "train_log.jsonl")
    return write_report(tables, out_dir / "report.html")
