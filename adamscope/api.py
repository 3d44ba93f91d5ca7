"""The library surface: analyze / inspect a checkpoint or a run folder. What cli.py calls."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from adamscope import __version__
from adamscope.config import StatsConfig
from adamscope.discovery import Found, discover
from adamscope.errors import AdamscopeError
from adamscope.readers.base import ReaderOptions, TensorState
from adamscope.tables import io

log = logging.getLogger(__name__)

PARTS = ".parts"  # per-checkpoint results inside OUT, the unit of --resume


@dataclass(frozen=True, kw_only=True)
class AnalyzeOptions:
    """Options of `analyze` beyond the statistics themselves."""

    out: Path = Path("adamscope-out")
    stats: StatsConfig = field(default_factory=StatsConfig)
    reader: ReaderOptions = field(default_factory=ReaderOptions)
    keep_going: bool = False  # analyse the other checkpoints when one fails
    resume: bool = False  # skip checkpoints whose results are already in OUT (same path, size, mtime)
    tensor_histograms: bool = True  # per-tensor histograms as well as per-layer ones


class Progress(Protocol):
    """What analyze reports while it works (the CLI draws bars; the library draws nothing)."""

    def checkpoint(self, index: int, total: int, path: Path) -> None: ...

    def tensor(self, name: str, numel: int) -> None: ...


@dataclass
class AnalyzeResult:
    out: Path
    checkpoints: list[Path]
    failures: list[tuple[Path, str]]
    skipped: list[Path]
    tables: dict[str, Path]


def analyze(path: Path, *, options: AnalyzeOptions, progress: Progress | None = None) -> AnalyzeResult:
    """Analyse every checkpoint at `path` and write the tables into `options.out`.

    Returns the written tables and the checkpoints that failed (only with keep_going).

    Raises:
        AdamscopeError: bad input (with keep_going: only when no checkpoint could be analysed).
    """
    path = Path(path)
    found = discover(path)
    out = Path(options.out)
    parts_dir = out / PARTS
    if out.exists() and not options.resume and parts_dir.exists():
        shutil.rmtree(parts_dir)  # a fresh run: stale per-checkpoint parts must not leak in
    parts_dir.mkdir(parents=True, exist_ok=True)

    failures: list[tuple[Path, str]] = []
    skipped: list[Path] = []
    done: list[tuple[Found, Path]] = []
    for i, f in enumerate(found):
        rel = _relative(f.path, path)
        key = fingerprint(f.path)
        part = parts_dir / key
        if progress:
            progress.checkpoint(i, len(found), f.path)
        if options.resume and (part / "meta.json").exists():
            skipped.append(f.path)
            done.append((f, part))
            continue
        try:
            tables = analyze_checkpoint(f, rel=rel, options=options, progress=progress)
        except AdamscopeError as e:
            if not options.keep_going:
                raise
            log.error("%s", e)
            failures.append((f.path, str(e)))
            continue
        _write_part(part, tables, meta={"path": str(f.path), "checkpoint": rel, "key": key})
        done.append((f, part))
    if not done:
        raise AdamscopeError(f"{path}: no checkpoint could be analysed ({len(failures)} failed)")
    written = _merge_parts([p for _, p in done], out)
    write_manifest(out, path=path, found=found, options=options, failures=failures)
    return AnalyzeResult(out, [f.path for f, _ in done], failures, skipped, written)


def analyze_checkpoint(
    found: Found, *, rel: str, options: AnalyzeOptions, progress: Progress | None = None
) -> dict[str, pl.DataFrame]:
    """Stream one checkpoint through the engine; return its tensors/layers/histograms frames."""
    from adamscope.layers import assign_layers
    from adamscope.stats.engine import merge_layer, summarize

    reader = found.reader(found.path, options=options.reader)
    cfg = options.stats
    sketches: dict[str, Any] = {}
    meta: dict[str, TensorState] = {}
    for ts in _tensors(reader, found.path):
        sk = summarize(ts, cfg)
        if progress:
            progress.tensor(ts.name, ts.numel if ts.piece is None else ts.piece[1])
        if ts.name in sketches:
            sketches[ts.name] = sketches[ts.name].merge(sk)  # pieces of one sharded tensor
        else:
            sketches[ts.name] = sk
            meta[ts.name] = ts
    if not sketches:
        raise AdamscopeError(f"{found.path}: the optimizer state holds no parameter tensors")

    steps = Counter(int(round(m.step)) for m in meta.values())
    step = steps.most_common(1)[0][0]
    layers = assign_layers(list(sketches))
    ident = {"checkpoint": rel, "step": step}
    t_rows, h_rows, l_rows = [], [], []
    by_layer: dict[str, list[Any]] = {}
    for name, sk in sketches.items():
        ts = meta[name]
        lay = layers[name]
        row = {
            **ident,
            "tensor": name,
            "layer": lay.layer,
            "depth": lay.depth,
            "shape": str(list(ts.shape)),
            "dtype": ts.dtype,
            "beta1": ts.hp.beta1,
            "beta2": ts.hp.beta2,
            "eps": ts.hp.eps,
            "lr": ts.hp.lr,
            "weight_decay": ts.hp.weight_decay,
            **sk.row(),
        }
        row["step"] = int(round(ts.step))
        t_rows.append(row)
        if options.tensor_histograms:
            h_rows.extend(_hist_rows(sk, {**ident, "level": "tensor", "tensor": name, "layer": lay.layer}))
        by_layer.setdefault(lay.layer, []).append(sk)
    for layer, sks in by_layer.items():
        merged = merge_layer(sks)
        depth = next(layers[n].depth for n in sketches if layers[n].layer == layer)
        l_rows.append({**ident, "layer": layer, "depth": depth, "n_tensors": len(sks), **merged.row()})
        h_rows.extend(_hist_rows(merged, {**ident, "level": "layer", "tensor": None, "layer": layer}))
    l_rows.sort(key=lambda r: r["depth"])
    return {
        "tensors": io.frame("tensors", t_rows),
        "layers": io.frame("layers", l_rows),
        "histograms": io.frame("histograms", h_rows),
    }


def _tensors(reader: Any, path: Path) -> Iterator[TensorState]:
    try:
        yield from reader.iter_tensors()
    except AdamscopeError:
        raise
    except (OSError, EOFError, ValueError, KeyError, RuntimeError) as e:
        # A reader bug or a file broken in a way the reader did not foresee: still one line, the file named.
        raise AdamscopeError(f"{path}: cannot read optimizer state ({type(e).__name__}: {e})") from e


def _hist_rows(sk: Any, ident: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {**ident, "quantity": q, "lo": lo, "hi": hi, "count": c} for q, lo, hi, c in sk.histograms()
    ]


def _relative(p: Path, root: Path) -> str:
    try:
        rel = p.resolve().relative_to(root.resolve())
    except ValueError:
        return str(p)
    return str(rel) if str(rel) != "" else "."


def fingerprint(path: Path) -> str:
    """Key of a checkpoint for --resume: its resolved path and every file's size and mtime."""
    h = hashlib.sha1(str(path.resolve()).encode())
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _write_part(part: Path, tables: dict[str, pl.DataFrame], *, meta: dict[str, Any]) -> None:
    """Write one checkpoint's frames as a folder that appears whole (rename of a temp folder)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{part.name}.", dir=part.parent))
    try:
        for name, df in tables.items():
            df.write_parquet(tmp / f"{name}.parquet")
        (tmp / "meta.json").write_text(json.dumps(meta))
        if part.exists():
            shutil.rmtree(part)
        os.replace(tmp, part)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _merge_parts(parts: list[Path], out: Path) -> dict[str, Path]:
    written = {}
    for name in ("tensors", "layers", "histograms"):
        frames = [pl.read_parquet(p / f"{name}.parquet") for p in parts]
        df = pl.concat(frames, how="vertical_relaxed") if frames else io.frame(name, [])
        target = out / f"{name}.parquet"
        io.write_parquet(df, target)
        written[name] = target
    return written


def write_manifest(
    out: Path,
    *,
    path: Path,
    found: list[Found],
    options: AnalyzeOptions,
    failures: list[tuple[Path, str]],
) -> None:
    import torch

    manifest = {
        "tool": "adamscope",
        "version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": {
            "path": str(path.resolve()),
            "checkpoints": [
                {"path": _relative(f.path, path), "format": getattr(f.reader, "name", "?")} for f in found
            ],
        },
        "options": {
            **options.stats.to_dict(),
            "reader": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options.reader).items()},
            "tensor_histograms": options.tensor_histograms,
        },
        "conventions": {
            "u": "m_hat / (sqrt(v_hat) + eps), torch order of operations"
            if options.stats.convention == "torch"
            else "paper: (b1 m_hat) / (sqrt(b2 v_hat) + eps)",
            "r": "u with eps = 0; r = 0 where v == 0",
            "std": "population (ddof = 0)",
        },
        "thresholds": asdict(options.stats.thresholds),
        "failures": [{"path": str(p), "error": e} for p, e in failures],
        "environment": {"torch": torch.__version__, "polars": pl.__version__},
    }
    io.write_json(manifest, out / "manifest.json")
