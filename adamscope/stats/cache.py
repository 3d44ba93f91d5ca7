"""A small disk cache for deterministic numeric results (the null model's tables), so that every
process after the first gets them in microseconds.

Files live in `$ADAMSCOPE_CACHE` (default `~/.cache/adamscope`), one `.npy` per key, written
atomically (temp file + rename) and read with `allow_pickle=False`; `ADAMSCOPE_CACHE=off` turns
the cache off. Nothing from a checkpoint names or reaches these files: keys are our own numbers.
Any failure to read or write falls back to computing (logged at debug level).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _root() -> Path | None:
    where = os.environ.get("ADAMSCOPE_CACHE", "")
    if where.lower() in ("off", "0", "none"):
        return None
    return Path(where) if where else Path.home() / ".cache" / "adamscope"


def cached_array(namespace: str, key: tuple, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """`compute()` (a float64 or int64 array), from the disk cache when it holds `key`."""
    root = _root()
    if root is None:
        return np.asarray(compute())
    digest = hashlib.sha256(repr((namespace, key)).encode()).hexdigest()[:32]
    path = root / namespace / f"{digest}.npy"
    try:
        if path.is_file() and not path.is_symlink():
            return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        log.debug("cache %s unreadable (%s): recomputing", path, e)
    value = np.asarray(compute())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.save(f, value, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as e:
        log.debug("cache %s not written (%s)", path, e)
    return value
