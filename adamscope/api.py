"""The library surface: analyze / inspect a checkpoint or a run folder. What cli.py calls."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from adamscope import __version__
from adamscope.config import ReaderOptions, StatsConfig
from adamscope.errors import AdamscopeError
from adamscope.pipeline.discovery import Found, discover
from adamscope.pipeline.distributed import Dist, current
from adamscope.tables import io
from adamscope.vocab import TensorState

log = logging.getLogger(__name__)

PARTS = ".parts"  # per-checkpoint results inside OUT, the unit of --resume


@dataclass(frozen=True, kw_only=True)
class AnalyzeOptions:
    """Options of `analyze` beyond the statistics themselves."""

    out: Path = Path("adamscope-out")
    stats: StatsConfig = field(default_factory=StatsConfig)
    reader: ReaderOptions = field(default_factory=ReaderOptions)
    keep_going: bool = False  # analyse the other checkpoints when one fails
    resume: bool = (
        False  # skip checkpoints whose results are already in OUT (same path, size, mtime)
    )
    tensor_histograms: bool = True  # per-tensor histograms as well as per-layer ones
    logs: tuple[Path, ...] = ()  # training logs; empty: look for them in PATH (a folder)
    loss_key: str | None = None
    step_key: str | None = None
    layer_norm_pattern: str | None = None
    gradients: bool = (
        True  # exact gradients for checkpoints saved one step apart (gradients.parquet)
    )


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


def analyze(
    path: Path, *, options: AnalyzeOptions, progress: Progress | None = None
) -> AnalyzeResult:
    """Analyse every checkpoint at `path` and write the tables into `options.out`.

    Returns the written tables and the checkpoints that failed (only with keep_going).

    Raises:
        AdamscopeError: bad input (with keep_going: only when no checkpoint could be analysed).
    """
    path = Path(path)
    d = current()
    found = discover(path)
    out = Path(options.out)
    parts_dir = out / PARTS
    keys = [fingerprint(f.path) for f in found]
    if d.is_main:
        if out.exists() and not options.resume and parts_dir.exists():
            shutil.rmtree(parts_dir)  # a fresh run: stale per-checkpoint parts must not leak in
        parts_dir.mkdir(parents=True, exist_ok=True)
        _remove_temps(parts_dir)  # left by an interrupted run (Ctrl-C, kill -9)
    # rank 0 decides what is already done, so that every rank walks the same list
    resumed = d.broadcast(
        [options.resume and (parts_dir / k / "meta.json").exists() for k in keys]
        if d.is_main
        else None
    )

    failures: list[tuple[Path, str]] = []
    skipped: list[Path] = []
    done: list[tuple[Found, Path]] = []
    for i, f in enumerate(found):
        rel = _relative(f.path, path)
        part = parts_dir / keys[i]
        if progress and d.is_main:
            progress.checkpoint(i, len(found), f.path)
        if resumed[i]:
            skipped.append(f.path)
            done.append((f, part))
            continue
        try:
            tables = analyze_checkpoint(
                f, rel=rel, options=options, progress=progress if d.is_main else None, dist=d
            )
        except AdamscopeError as e:
            if not options.keep_going:
                raise
            log.error("%s", e)
            failures.append((f.path, str(e)))
            continue
        if tables is not None:
            _write_part(part, tables, meta={"path": str(f.path), "checkpoint": rel, "key": keys[i]})
        done.append((f, part))
    if not done:
        raise AdamscopeError(f"{path}: no checkpoint could be analysed ({len(failures)} failed)")
    if not d.is_main:
        return AnalyzeResult(out, [f.path for f, _ in done], failures, skipped, {})
    written = _merge_parts([p for _, p in done], out)
    written.update(_ingest_logs(path, out, options))
    if options.gradients:
        rels = [(_relative(f.path, path), f) for f, _ in done]
        written.update(_consecutive_gradients(rels, written["tensors"], out, options))
    write_manifest(out, path=path, found=found, options=options, failures=failures, world=d.world)
    return AnalyzeResult(out, [f.path for f, _ in done], failures, skipped, written)


def analyze_checkpoint(
    found: Found,
    *,
    rel: str,
    options: AnalyzeOptions,
    progress: Progress | None = None,
    dist: Dist | None = None,
) -> dict[str, pl.DataFrame] | None:
    """Stream one checkpoint through the engine; return its tensors/layers/histograms frames.

    Under torch.distributed every rank summarises its share of the tensors; every few tensors the
    sketches travel to rank 0, which folds them in tensor order (the order one process uses, so the
    tables are the same) and returns the frames; the other ranks return None.
    """
    from adamscope.stats.engine import cpu_workers, resolve_device, summarize
    from adamscope.stats.prefetch import TensorPrefetch
    from adamscope.tables.checkpoint import CheckpointTables, TensorMeta

    d = dist or Dist()
    cfg = options.stats
    acc = CheckpointTables(rel=rel, path=found.path, tensor_histograms=options.tensor_histograms)
    batch: list[tuple[int, TensorMeta, Any]] = []
    every = 4 * d.world  # tensors between two gathers: bounds rank 0's memory
    error: AdamscopeError | None = None
    try:
        reader = _guard(found.path, "cannot open", found.reader, found.path, options=options.reader)
        states = TensorPrefetch(  # the next tensor is read while this one is summarised
            _tensors(reader, found.path),
            chunk_elems=cfg.chunk_elems,
            device=resolve_device(cfg.device),
            wanted=d.mine,
        )
        with cpu_workers(), states:  # torch single-threaded; the engine's worker threads instead
            for i, ts in enumerate(states):
                if d.mine(i):
                    sk = _guard(found.path, f"'{ts.name}': cannot summarise", summarize, ts, cfg)
                    if progress:
                        progress.tensor(ts.name, ts.numel if ts.piece is None else ts.piece[1])
                    meta = TensorMeta(ts.name, tuple(ts.shape), ts.dtype, ts.step, ts.hp, ts.piece)
                    if not d.active:
                        acc.add_later(meta, sk)
                        continue
                    batch.append((i, meta, sk))
                if d.active and (i + 1) % every == 0:
                    _exchange(d, acc, batch, None)
                    batch = []
        if not d.active:
            acc.drain()
    except AdamscopeError as e:
        error = e
    finally:
        acc.close()
    if d.active:
        _exchange(d, acc, batch, error, final=True)
    elif error is not None:
        raise error
    return acc.frames() if d.is_main else None


def _exchange(
    d: Dist, acc: Any, batch: list, error: AdamscopeError | None, *, final: bool = False
) -> None:
    """Gather a batch of sketches on rank 0 and fold them in tensor order; stop every rank on an error."""
    from adamscope.stats.sketch import TensorSketch

    gathered = d.gather(
        (str(error) if error else None, final, [(i, m, sk.to_state()) for i, m, sk in batch])
    )
    first_error = None
    if gathered is not None:
        first_error = next((g[0] for g in gathered if g[0]), None)
        finals = {g[1] for g in gathered}
        if first_error is None and len(finals) > 1:
            first_error = "the ranks saw different numbers of tensors; stopped"
    first_error = d.broadcast(first_error)
    if first_error:
        raise error if error is not None else AdamscopeError(first_error)
    if gathered is not None:
        for _, meta, state in sorted((e for g in gathered for e in g[2]), key=lambda e: e[0]):
            acc.add(meta, TensorSketch.from_state(state))


def _consecutive_gradients(
    found: list[tuple[str, Found]], tensors: Path, out: Path, options: AnalyzeOptions
) -> dict[str, Path]:
    """gradients.parquet for every pair of analysed checkpoints whose stored steps differ by 1."""
    from adamscope.forensics import GradientOptions, pair_gradients

    step_of = dict(
        pl.read_parquet(tensors, columns=["checkpoint", "step"])
        .group_by("checkpoint")
        .agg(pl.col("step").mode().first())
        .iter_rows()
    )
    by_step = {step_of[rel]: f for rel, f in found if rel in step_of}
    gopts = GradientOptions(reader=options.reader, chunk_elems=options.stats.chunk_elems)
    frames = []
    for st in sorted(by_step):
        if st - 1 not in by_step:
            continue
        a, b = by_step[st - 1], by_step[st]
        try:
            t, lay = pair_gradients(a.path, b.path, options=gopts)
        except AdamscopeError as e:
            log.warning("gradients %s -> %s skipped: %s", a.path, b.path, e)
            continue
        frames += [t.with_columns(level=pl.lit("tensor")), lay.with_columns(level=pl.lit("layer"))]
    if not frames:
        return {}
    df = pl.concat(frames, how="diagonal_relaxed")
    target = out / "gradients.parquet"
    io.write_parquet(df.select("level", *[c for c in df.columns if c != "level"]), target)
    return {"gradients": target}


def _ingest_logs(path: Path, out: Path, options: AnalyzeOptions) -> dict[str, Path]:
    """losses.parquet (and grad_norms.parquet) from the logs given, or found in the run folder."""
    from adamscope.logs import find_logs, write_logs

    paths = list(options.logs) or (find_logs(path) if path.is_dir() else [])
    if not paths:
        return {}
    kw = {"layer_norm_pattern": options.layer_norm_pattern} if options.layer_norm_pattern else {}
    files = write_logs(
        out,
        paths,
        loss_key=options.loss_key,
        step_key=options.step_key,
        missing_ok=not options.logs,
        **kw,
    )
    return {f.stem: f for f in files}


def _tensors(reader: Any, path: Path) -> Iterator[TensorState]:
    it = _guard(path, "cannot read optimizer state", lambda: iter(reader.iter_tensors()))
    while True:
        ts = _guard(path, "cannot read optimizer state", next, it, None)
        if ts is None:
            return
        yield ts


def _guard(path: Path, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs), with any failure that is not an AdamscopeError (a reader or engine bug,
    or a file broken in a way nobody foresaw: struct.error, IndexError, RecursionError,
    MemoryError...) turned into one line naming the file, so --keep-going can go on."""
    try:
        return fn(*args, **kwargs)
    except AdamscopeError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised as a user-facing error, traceback chained
        log.debug("%s: %s", path, what, exc_info=True)
        detail = " ".join(str(e).split())[:200]
        raise AdamscopeError(f"{path}: {what} ({type(e).__name__}: {detail})") from e


def _remove_temps(folder: Path) -> None:
    """Deletes the hidden temp folders/files an interrupted run left in `folder`."""
    for p in folder.glob(".*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


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
        h.update(
            f"{f.relative_to(path) if f != path else f.name}:{st.st_size}:{st.st_mtime_ns}".encode()
        )
    return h.hexdigest()[:20]


def _write_part(part: Path, tables: dict[str, pl.DataFrame], *, meta: dict[str, Any]) -> None:
    """Write one checkpoint's frames as a folder that appears whole (rename of a temp folder)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{part.name}.", dir=part.parent))
    try:
        tmp.chmod(0o777 & ~io._UMASK)  # mkdtemp makes 0700 folders
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
    world: int = 1,
) -> None:
    import torch

    manifest = {
        "tool": "adamscope",
        "version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": {
            "path": str(path.resolve()),
            "checkpoints": [
                {"path": _relative(f.path, path), "format": getattr(f.reader, "name", "?")}
                for f in found
            ],
        },
        "options": {
            **options.stats.to_dict(),
            "reader": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options.reader).items()
            },
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
        "processes": world,
        "environment": {"torch": torch.__version__, "polars": pl.__version__},
    }
    io.write_json(manifest, out / "manifest.json")
