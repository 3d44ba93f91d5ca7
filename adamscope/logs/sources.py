"""Read one training log into a wide frame: a `step` column plus one Float64 column per logged key.

Formats: Hugging Face `trainer_state.json` (log_history), JSONL (one JSON object per line), CSV with
a header (including Lightning's CSVLogger `metrics.csv`) and TensorBoard event files (needs the
optional `tensorboard` package). Non-numeric values are dropped; nothing here picks the loss.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl

from adamscope.errors import AdamscopeError
from adamscope.readers import guard

log = logging.getLogger(__name__)

STEP_KEYS = ("step", "global_step", "iter_num", "iter", "iteration", "trainer/global_step", "_step")
TB_PREFIX = "events.out.tfevents"


def kind_of(path: Path) -> str:
    """The format of a log file from its name: trainer_state | tensorboard | jsonl | csv."""
    name = path.name
    if name == "trainer_state.json":
        return "trainer_state"
    if name.startswith(TB_PREFIX) or path.is_dir():
        return "tensorboard"
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix == ".json":
        return "trainer_state"
    raise AdamscopeError(
        f"{path}: unknown log format; expected trainer_state.json, *.jsonl, *.csv or a TensorBoard "
        f"event file ({TB_PREFIX}.*)"
    )


def read_wide(path: Path, *, step_key: str | None = None) -> pl.DataFrame:
    """Read `path` into a frame: an Int64 `step` column and Float64 value columns, sorted by step.

    Raises:
        AdamscopeError: unreadable file, or no step column (name it with step_key).
    """
    kind = kind_of(path)
    if kind == "tensorboard":
        from adamscope.logs.tensorboard import read_tensorboard

        return read_tensorboard(path)
    try:
        if kind == "trainer_state":
            records = _trainer_state(path)
            return _from_records(records, path=path, step_key=step_key or "step")
        if kind == "jsonl":
            return _from_records(_jsonl(path), path=path, step_key=step_key)
        return _csv(path, step_key=step_key)
    except AdamscopeError:
        raise
    except (OSError, UnicodeDecodeError) as e:
        raise AdamscopeError(f"{path}: cannot read log ({e})") from e
    except (ValueError, OverflowError, RecursionError, MemoryError, pl.exceptions.PolarsError) as e:
        detail = " ".join(str(e).split())[:200]
        raise AdamscopeError(f"{path}: cannot read log ({type(e).__name__}: {detail})") from e


def _trainer_state(path: Path) -> list[dict[str, Any]]:
    state = guard.read_json(path, limit=guard.JSON_BYTES, what="trainer_state.json")
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise AdamscopeError(f"{path}: no 'log_history' list; not a Trainer trainer_state.json?")
    return [h for h in history if isinstance(h, dict)]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    """One record per line; a line longer than guard.LINE_BYTES is refused before it is parsed
    (a log line of gigabytes is not a metrics record)."""
    guard.regular_file(path, limit=guard.LOG_BYTES, what="training log")
    records = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(iter(lambda: f.readline(guard.LINE_BYTES + 1), b""), 1):
            if len(raw) > guard.LINE_BYTES and not raw.endswith(b"\n"):
                raise AdamscopeError(
                    f"{path}:{lineno}: line longer than {guard.LINE_BYTES} bytes; not a log record"
                )
            line = raw.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise AdamscopeError(f"{path}:{lineno}: not a JSON object ({e.msg})") from e
            except (ValueError, RecursionError) as e:
                raise AdamscopeError(f"{path}:{lineno}: not a JSON object ({e!s:.100})") from e
            if isinstance(obj, dict):
                records.append(_flatten(obj))
    return records


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become slash-joined keys ({"train": {"loss": 1}} -> "train/loss")."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _from_records(
    records: Iterable[dict[str, Any]], *, path: Path, step_key: str | None
) -> pl.DataFrame:
    """Records -> the wide frame, in time linear in the number of logged values: each key's
    numbers are gathered sparsely, so a log whose every line brings new keys costs what it holds,
    not lines x keys (see _CELLS_MAX for what the dense frame may hold)."""
    rows = list(records)
    if not rows:  # e.g. an early save's empty log_history: nothing logged yet
        return pl.DataFrame(schema={"step": pl.Int64})
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    skey = _pick_step(list(keys), path=path, step_key=step_key)
    cells: dict[str, tuple[list[int], list[float]]] = {}
    steps: list[int | None] = []
    for i, r in enumerate(rows):
        s = _number(r.get(skey)) if skey else float(i)
        steps.append(None if s is None or not -_STEP_MAX <= s <= _STEP_MAX else int(s))
        for k, v in r.items():
            x = _number(v) if k != skey else None
            if x is not None:
                at, values = cells.setdefault(k, ([], []))
                at.append(i)
                values.append(x)
    n = len(rows)
    numeric = [k for k in keys if k in cells]
    if len(numeric) * n > _CELLS_MAX:  # keep the keys logged most often (the loss among them)
        keep = set(sorted(numeric, key=lambda k: -len(cells[k][0]))[: max(1, _CELLS_MAX // n)])
        log.warning(
            "%s: %d records with %d numeric keys is more than a metrics table holds; keeping the "
            "%d keys logged most often, dropping %d",
            path, n, len(numeric), len(keep), len(numeric) - len(keep),
        )  # fmt: skip
        numeric = [k for k in numeric if k in keep]
    columns = [pl.Series("step", steps, dtype=pl.Int64)]
    for k in numeric:
        at, values = cells[k]
        col = pl.repeat(None, n, dtype=pl.Float64, eager=True).scatter(at, values)
        columns.append(col.alias(k))
    df = pl.DataFrame(columns)
    return df.filter(pl.col("step").is_not_null()).sort("step", maintain_order=True)


# the most values the dense wide frame may hold (float64 and a validity bit: ~170 MB)
_CELLS_MAX = 20_000_000
_STEP_MAX = float(1 << 62)  # a step outside Int64 (1e30, inf, NaN) is not a step: dropped


def _pick_step(keys: list[str], *, path: Path, step_key: str | None) -> str | None:
    if step_key is not None:
        if step_key not in keys:
            raise AdamscopeError(
                f"{path}: no step key {step_key!r}; keys are {_show(keys)} (use --step-key)"
            )
        return step_key
    for k in STEP_KEYS:
        if k in keys:
            return k
    log.warning("%s: no step column among %s; using the row number as the step", path, _show(keys))
    return None


def _csv(path: Path, *, step_key: str | None) -> pl.DataFrame:
    guard.regular_file(path, limit=guard.LOG_BYTES, what="training log")
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        raw = pl.read_csv(path, separator=sep, infer_schema=False)  # all strings: we parse numbers
    except pl.exceptions.PolarsError as e:
        raise AdamscopeError(f"{path}: cannot parse CSV ({type(e).__name__}: {e})") from e
    skey = _pick_step(raw.columns, path=path, step_key=step_key)
    values = raw.select(
        pl.col(c).str.strip_chars().cast(pl.Float64, strict=False) for c in raw.columns
    )
    if skey is None:
        values = values.with_row_index("step").with_columns(pl.col("step").cast(pl.Int64))
    else:
        values = values.rename({skey: "step"}).with_columns(
            pl.col("step").cast(pl.Int64, strict=False)  # 1e30, inf, NaN: not a step, dropped
        )
    keep = [c for c in values.columns if c != "step" and values[c].null_count() < len(values)]
    values = values.select("step", *keep).filter(pl.col("step").is_not_null())
    return values.sort("step", maintain_order=True)


def _show(keys: list[str], n: int = 12) -> str:
    head = ", ".join(repr(k) for k in keys[:n])
    return f"[{head}{', ...' if len(keys) > n else ''}]"
