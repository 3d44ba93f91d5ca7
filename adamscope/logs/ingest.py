"""Training logs -> the losses table (step, loss, perplexity, grad_norm, lr, source) and the
per-layer gradient norms logged during training (step, name, grad_norm, source).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from adamscope.errors import AdamscopeError
from adamscope.logs.sources import TB_PREFIX, _show, read_wide

log = logging.getLogger(__name__)

# Tried in order without --loss-key (HF Trainer, its TensorBoard callback, Lightning, Megatron).
LOSS_KEYS = (
    "loss",
    "train/loss",
    "train_loss",
    "train_loss_step",
    "training_loss",
    "train/lm_loss",
    "lm_loss",
    "lm loss",
    "Loss/train",
    "loss_step",
)
GRAD_NORM_KEYS = (
    "grad_norm",
    "train/grad_norm",
    "grad-norm",
    "grad norm",
    "gradient_norm",
    "total_norm",
)
LR_KEYS = ("learning_rate", "lr", "train/learning_rate", "learning-rate", "lr-AdamW", "lr-Adam")
# Per-layer gradient norms: "grad_norm/<parameter or layer name>" (also under a "train/" prefix).
LAYER_NORM_PATTERN = r"^(?:[\w-]+/)?grad_?norms?/(?P<name>.+)$"

LOSS_SCHEMA = {
    "step": pl.Int64,
    "loss": pl.Float64,
    "perplexity": pl.Float64,
    "grad_norm": pl.Float64,
    "lr": pl.Float64,
    "source": pl.Utf8,
}
LAYER_NORM_SCHEMA = {"step": pl.Int64, "name": pl.Utf8, "grad_norm": pl.Float64, "source": pl.Utf8}

_MAX_DEPTH = 4  # how deep find_logs looks under a run folder


def find_logs(path: Path) -> list[Path]:
    """Training logs in a run folder: trainer_state.json (every checkpoint-N/), TensorBoard event
    files, Lightning metrics.csv, and *.jsonl files directly in the folder. Sorted, no duplicates.

    A file `path` is returned as is; a missing path gives [].
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    found: list[Path] = []
    root_depth = len(path.parts)
    for dirpath, dirnames, filenames in os.walk(path):
        d = Path(dirpath)
        if len(d.parts) - root_depth >= _MAX_DEPTH:
            dirnames[:] = []
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        for name in sorted(filenames):
            if name == "trainer_state.json" or name.startswith(TB_PREFIX) or name == "metrics.csv":
                found.append(d / name)
            elif d == path and name.endswith((".jsonl", ".ndjson")):
                found.append(d / name)
    return sorted(set(found), key=_order)


def _order(p: Path) -> tuple[int, str]:
    """trainer_state.json of later checkpoints last, so their (cumulative) history wins on ties."""
    m = re.search(r"checkpoint-(\d+)", str(p))
    return (int(m.group(1)) if m else -1, str(p))


def ingest(
    paths: Path | Sequence[Path],
    *,
    loss_key: str | None = None,
    step_key: str | None = None,
    missing_ok: bool = False,
) -> pl.DataFrame:
    """Read training logs into the losses table, sorted by step, one row per step.

    Args:
        paths: log files, or run folders searched with `find_logs`.
        loss_key, step_key: column/key/tag names; default: the first of LOSS_KEYS / STEP_KEYS found.
        missing_ok: return an empty table instead of raising when no log holds a loss.

    Returns:
        Columns step, loss, perplexity = exp(loss), grad_norm, lr, source (the file). When several
        sources log the same step, the one listed last wins (later checkpoints' trainer_state.json).

    Raises:
        AdamscopeError: a named file is unreadable or holds no loss (the message lists its keys).
    """
    files, explicit = _files(paths)
    frames = []
    for f in files:
        try:
            wide = read_wide(f, step_key=step_key)
            frames.append(_losses(wide, path=f, loss_key=loss_key))
        except AdamscopeError as e:
            if f in explicit:
                raise
            log.warning("skipping %s", e)
    frames = [f for f in frames if len(f)]
    if not frames:
        if missing_ok:
            return pl.DataFrame(schema=LOSS_SCHEMA)
        where = ", ".join(str(p) for p in ([paths] if isinstance(paths, Path | str) else paths))
        raise AdamscopeError(f"{where}: no training loss in any log (name it with --loss-key)")
    out = pl.concat(frames, how="vertical")
    return out.unique("step", keep="last", maintain_order=True).sort("step")


def ingest_layer_norms(
    paths: Path | Sequence[Path],
    *,
    pattern: str = LAYER_NORM_PATTERN,
    step_key: str | None = None,
) -> pl.DataFrame:
    """Per-layer (or per-parameter) gradient norms logged during training, in long form.

    Every key/tag matching `pattern` (a regex with a group `name`) becomes rows (step, name,
    grad_norm, source). Empty when no log holds such keys.
    """
    regex = re.compile(pattern)
    if "name" not in regex.groupindex:
        raise AdamscopeError(f"layer-norm pattern {pattern!r} needs a named group (?P<name>...)")
    files, explicit = _files(paths)
    frames = []
    for f in files:
        try:
            wide = read_wide(f, step_key=step_key)
        except AdamscopeError as e:
            if f in explicit:
                raise
            log.debug("skipping %s", e)  # ingest(), always called first, warned about it
            continue
        for col in wide.columns:
            m = regex.match(col) if col != "step" else None
            if m:
                part = wide.select("step", pl.col(col).alias("grad_norm")).drop_nulls("grad_norm")
                frames.append(
                    part.with_columns(name=pl.lit(m.group("name")), source=pl.lit(str(f))).select(
                        list(LAYER_NORM_SCHEMA)
                    )
                )
    if not frames:
        return pl.DataFrame(schema=LAYER_NORM_SCHEMA)
    out = pl.concat(frames, how="vertical")
    return out.unique(["step", "name"], keep="last", maintain_order=True).sort("step", "name")


def _files(paths: Path | Sequence[Path]) -> tuple[list[Path], set[Path]]:
    items = [Path(paths)] if isinstance(paths, str | os.PathLike) else [Path(p) for p in paths]
    files: list[Path] = []
    explicit: set[Path] = set()
    for p in items:
        if p.is_file() or p.name.startswith(TB_PREFIX):
            if not p.exists():
                raise AdamscopeError(f"{p}: no such log file")
            files.append(p)
            explicit.add(p)
        elif p.is_dir():
            files.extend(find_logs(p))
        else:
            raise AdamscopeError(f"{p}: no such log file or folder")
    return files, explicit


def _losses(wide: pl.DataFrame, *, path: Path, loss_key: str | None) -> pl.DataFrame:
    if not len(wide):  # nothing logged yet (an early save's empty log_history): no rows, no error
        return pl.DataFrame(schema=LOSS_SCHEMA)
    cols = [c for c in wide.columns if c != "step"]
    key = _pick(cols, loss_key, LOSS_KEYS)
    if key is None:
        hint = f"no key {loss_key!r}" if loss_key else "no loss key"
        raise AdamscopeError(f"{path}: {hint}; keys are {_show(cols)} (use --loss-key)")
    grad = _pick(cols, None, GRAD_NORM_KEYS)
    lr = _pick(cols, None, LR_KEYS)
    df = wide.select(
        "step",
        pl.col(key).alias("loss"),
        (pl.col(grad) if grad else pl.lit(None, pl.Float64)).alias("grad_norm"),
        (pl.col(lr) if lr else pl.lit(None, pl.Float64)).alias("lr"),
    ).filter(pl.col("loss").is_not_null())
    # exp overflows to inf for loss > ~709: that is what the perplexity is, so keep it.
    ppl = [math.inf if x > 709.0 else math.exp(x) for x in df["loss"].to_list()]
    df = df.with_columns(perplexity=pl.Series(ppl, dtype=pl.Float64), source=pl.lit(str(path)))
    log.info("%s: %d loss rows from key %r", path, len(df), key)
    return df.unique("step", keep="last", maintain_order=True).select(list(LOSS_SCHEMA))


def _pick(cols: list[str], wanted: str | None, candidates: Sequence[str]) -> str | None:
    if wanted is not None:
        return wanted if wanted in cols else None
    for c in candidates:
        if c in cols:
            return c
    return None
