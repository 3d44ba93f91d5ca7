"""Writing tables: atomic writes (every output file appears whole, temp file + rename, or not at
all) and frames with exactly the schema's columns. The one loader is `tables.model.load`."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from adamscope.tables.schema import columns

# analyze's scratch folder inside OUT (pipeline.run.PARTS): temp files go there when it exists, so that an
# interrupted run (kill -9) never leaves anything but whole files beside the tables
SCRATCH = ".parts"


# mkstemp creates 0600 files; outputs get the usual permissions (0666 less the umask)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _tmp_beside(path: Path) -> Path:
    scratch = path.parent / SCRATCH
    folder = scratch if scratch.is_dir() else path.parent  # same filesystem: os.replace is atomic
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.fchmod(fd, 0o666 & ~_UMASK)
    os.close(fd)
    return Path(name)


def write_parquet(df: pl.DataFrame, path: Path) -> None:
    """Write `df` to `path` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(path)
    try:
        df.write_parquet(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(obj: Any, path: Path) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(path)
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# The one map from the schema's dtype names to polars dtypes.
DTYPES = {"str": pl.Utf8, "i64": pl.Int64, "u32": pl.UInt32, "f64": pl.Float64, "bool": pl.Boolean}


def polars_schema(table: str) -> dict[str, Any]:
    """{column: polars dtype} of a table (or of a part of one, schema.PARTS), in schema order."""
    return {c.name: DTYPES[c.dtype] for c in columns(table)}


def frame(table: str, rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Build a DataFrame with exactly the schema's columns and dtypes, in schema order."""
    schema = polars_schema(table)
    if not rows:
        return pl.DataFrame(schema=schema)
    cols = {name: [r.get(name) for r in rows] for name in schema}
    return pl.DataFrame(cols, schema=schema, strict=False)
