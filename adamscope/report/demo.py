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
        AdamscopeError: `out_dir/run` holds checkpoints that demo did not simulate.
    """
    from adamscope.api import AnalyzeOptions, analyze
    from adamscope.logs import write_logs
    from adamscope.report.render import write_report
    from adamscope.sim.section4 import simulate

    out_dir = Path(out_dir)
    run_dir = out_dir / "run"
    tables = out_dir / "tables"
    reuse = run_dir.exists() and any(run_dir.glob("step_*"))
    if reuse and not (run_dir / "schedule.json").is_file():
        raise AdamscopeError(
            f"{run_dir}: holds checkpoints demo did not make; give demo an empty folder"
        )
    if reuse:  # a second `adamscope demo`: keep the simulated run, redo the tables and the report
        log.info("demo: reusing the simulated run in %s", run_dir)
    else:
        log.info("demo: simulating a run into %s", run_dir)
        simulate(run_dir, seed=seed)
    analyze(run_dir, options=AnalyzeOptions(out=tables, resume=reuse))
    write_logs(tables, run_dir / "train_log.jsonl")
    return write_report(tables, out_dir / "report.html")
