"""Training-log ingestion (losses.parquet, per-layer gradient norms) and loss-spike detection."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from adamscope.logs.ingest import (
    LAYER_NORM_PATTERN,
    find_logs,
    ingest,
    ingest_layer_norms,
)

__all__ = ["LAYER_NORM_PATTERN", "find_logs", "ingest", "ingest_layer_norms", "write_logs"]

LOSSES_FILE = "losses.parquet"
LAYER_NORMS_FILE = "grad_norms.parquet"


def write_logs(
    out_dir: Path,
    paths: Path | Sequence[Path],
    *,
    loss_key: str | None = None,
    step_key: str | None = None,
    layer_norm_pattern: str = LAYER_NORM_PATTERN,
    missing_ok: bool = True,
) -> list[Path]:
    """Ingest `paths` and write losses.parquet (and grad_norms.parquet when per-layer norms were
    logged) into `out_dir`. Returns the files written (none when no log was found and missing_ok).
    """
    from adamscope.tables import io

    out_dir = Path(out_dir)
    written = []
    losses = ingest(paths, loss_key=loss_key, step_key=step_key, missing_ok=missing_ok)
    if len(losses):
        io.write_parquet(losses, out_dir / LOSSES_FILE)
        written.append(out_dir / LOSSES_FILE)
        norms = ingest_layer_norms(paths, pattern=layer_norm_pattern, step_key=step_key)
        if len(norms):
            io.write_parquet(norms, out_dir / LAYER_NORMS_FILE)
            written.append(out_dir / LAYER_NORMS_FILE)
    return written
