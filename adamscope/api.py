"""The library surface: `analyze(path, **options) -> Tables`, `load(out) -> Tables`, `inspect(path)`.

What the CLI calls and what a notebook uses; everything here is re-exported by `adamscope`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from adamscope.config import AnalyzeOptions, ReaderOptions, StageThresholds, StatsConfig
from adamscope.pipeline.inspect import Inspection
from adamscope.pipeline.run import Progress
from adamscope.tables.model import Tables

__all__ = [
    "AnalyzeOptions",
    "Inspection",
    "Progress",
    "ReaderOptions",
    "StageThresholds",
    "StatsConfig",
    "Tables",
    "analyze",
    "inspect",
    "load",
]

PathLike = str | os.PathLike[str]


def analyze(
    path: PathLike,
    *,
    options: AnalyzeOptions | None = None,
    progress: Progress | None = None,
    **kw: Any,
) -> Tables:
    """Analyse the checkpoint (file or folder) or run folder at `path`.

    Args:
        path: one checkpoint, or a run folder of many (analysed in step order).
        options: all options at once; keyword options override single fields of it, by name:
            `out=` (also write the tables there; default: memory only), `resume=`, `keep_going=`,
            `dip_sample=`, `convention=`, `device=`, `model=`, `suppression=`, ... (every field
            of AnalyzeOptions, StatsConfig, StageThresholds and ReaderOptions).
        progress: receives `checkpoint(i, n, path)` and `tensor(name, numel)` calls, and
            `elements(n)` as each chunk is read when it has that method (from a reading thread).

    Returns:
        The tables (polars DataFrames) and the manifest. Under torch.distributed only rank 0
        gets them; the other ranks get an empty `Tables`.

    Raises:
        AdamscopeError: bad input (a message naming the file and what is wrong), or an option
            with a value it cannot take (OptionError).
    """
    from adamscope.pipeline.run import run

    opts = options or AnalyzeOptions()
    if kw:
        opts = opts.updated(**kw)
    result = run(Path(path), options=opts, progress=progress)
    if result is None:  # a rank other than 0: the tables live on rank 0
        import polars as pl

        return Tables(tensors=pl.DataFrame(), layers=pl.DataFrame(), path=opts.out)
    return result


def load(out: PathLike) -> Tables:
    """The tables `analyze(..., out=OUT)` (or `adamscope analyze -o OUT`) wrote into `out`.

    Raises:
        AdamscopeError: tensors.parquet or layers.parquet is missing, or a file is unreadable.
    """
    from adamscope.tables.model import load as load_tables

    return load_tables(Path(out))


def inspect(path: PathLike, *, options: ReaderOptions | None = None, **kw: Any) -> Inspection:
    """What `path` holds, without reading tensor data: format, step, groups, tensors.

    Keyword options are fields of ReaderOptions (`model=`, `trust_pickle=`, ...).
    """
    from dataclasses import replace

    from adamscope.pipeline.inspect import inspect_path

    opts = replace(options or ReaderOptions(), **kw)
    return inspect_path(Path(path), options=opts)
