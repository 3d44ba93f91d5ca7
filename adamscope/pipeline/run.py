"""The analysis pipeline behind `adamscope.analyze`: discovery -> readers -> engine -> tables, one
checkpoint at a time; per-checkpoint parts in OUT/.parts (the unit of resume), torch.distributed
ranks sharing the tensors, training logs and consecutive-checkpoint gradients beside them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from adamscope._version import __version__
from adamscope.config import AnalyzeOptions
from adamscope.errors import AdamscopeError
from adamscope.pipeline.discovery import Found, discover
from adamscope.pipeline.distributed import Dist, current
from adamscope.tables import io
from adamscope.tables.model import Tables
from adamscope.vocab import TensorState

log = logging.getLogger(__name__)

PARTS = ".parts"  # per-checkpoint results inside OUT, the unit of --resume


class Progress(Protocol):
    """What analyze reports while it works (the CLI draws bars; the library draws nothing)."""

    def checkpoint(self, index: int, total: int, path: Path) -> None: ...

    def tensor(self, name: str, numel: int) -> None: ...


def _counted(ts: Any, progress: Any) -> Any:
    """`ts` whose chunks report their elements to `progress.elements(n)` as they are read, when
    the progress has that method: a tensor of billions of elements is minutes of reading, and a
    bar that moves only between tensors would look hung."""
    elements = getattr(progress, "elements", None)
    if elements is None:
        return ts
    inner = ts.chunks

    def chunks(n: int) -> Any:
        for item in inner(n):
            m = item[1]
            elements(m.numel() if callable(getattr(m, "numel", None)) else len(m))
            yield item

    return replace(ts, chunks=chunks)


def run(path: Path, *, options: AnalyzeOptions, progress: Progress | None = None) -> Tables | None:
    """Analyse every checkpoint at `path`; the tables in memory, also written to `options.out`
    when set. Under torch.distributed rank 0 returns the tables, the other ranks None.

    Raises:
        AdamscopeError: bad input (with keep_going: only when no checkpoint could be analysed).
    """
    path = Path(path)
    d = current()
    found = discover(path)
    out = Path(options.out) if options.out is not None else None
    parts_dir = out / PARTS if out is not None else None
    keys = [fingerprint(f.path) for f in found]
    if out is not None:
        check_output(out, inputs=path)
    if d.is_main and parts_dir is not None:
        if out.exists() and not options.resume and parts_dir.exists():  # type: ignore[union-attr]
            shutil.rmtree(parts_dir)  # a fresh run: stale per-checkpoint parts must not leak in
        parts_dir.mkdir(parents=True, exist_ok=True)
        _remove_temps(parts_dir)  # left by an interrupted run (Ctrl-C, kill -9)
    # rank 0 decides what is already done, so that every rank walks the same list
    resumed = d.broadcast(
        [
            bool(parts_dir and options.resume and (parts_dir / k / "meta.json").exists())
            for k in keys
        ]
        if d.is_main
        else None
    )

    failures: list[tuple[Path, str]] = []
    skipped: list[Path] = []
    done: list[tuple[Found, dict[str, pl.DataFrame] | Path]] = []
    for i, f in enumerate(found):
        rel = _relative(f.path, path)
        if progress and d.is_main:
            progress.checkpoint(i, len(found), f.path)
        if resumed[i]:
            skipped.append(f.path)
            done.append((f, parts_dir / keys[i]))  # type: ignore[operator]
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
        if tables is not None and parts_dir is not None:
            part = parts_dir / keys[i]
            _write_part(part, tables, meta={"path": str(f.path), "checkpoint": rel, "key": keys[i]})
            done.append((f, part))
        else:
            done.append((f, tables or {}))
    if not done:
        raise AdamscopeError(f"{path}: no checkpoint could be analysed ({len(failures)} failed)")
    if not d.is_main:
        return None
    frames = _merge([t for _, t in done])
    from adamscope.tables.rows import run_verdicts

    thr = options.stats.thresholds
    frames["tensors"] = run_verdicts(frames["tensors"], key="tensor", thresholds=thr)
    frames["layers"] = run_verdicts(frames["layers"], key="layer", thresholds=thr)
    frames.update(_logs(path, options))
    if options.gradients:
        rels = [(_relative(f.path, path), f) for f, _ in done]
        grads = _consecutive_gradients(rels, frames["tensors"], options)
        if grads is not None:
            frames["gradients"] = grads
    manifest = build_manifest(
        path=path, found=found, options=options, failures=failures, world=d.world
    )
    result = Tables(
        **frames,
        manifest=manifest,
        path=out,
        checkpoints=[f.path for f, _ in done],
        failures=tuple(failures),
        skipped=skipped,
    )
    if out is not None:
        result.write(out)
    return result


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
    from adamscope.readers import buffers

    pinned = contextlib.ExitStack()
    try:  # reads into page-locked memory for a GPU, from before the read-ahead thread starts
        pinned.enter_context(
            buffers.pinned_reads(enabled=resolve_device(cfg.device).type == "cuda")
        )
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
                    if progress:
                        ts = _counted(ts, progress)
                    sk = _guard(found.path, f"'{ts.name}': cannot summarise", summarize, ts, cfg)
                    if progress:
                        progress.tensor(ts.name, ts.numel if ts.piece is None else ts.piece[1])
                    meta = TensorMeta(
                        ts.name, tuple(ts.shape), ts.dtype, ts.step, ts.hp, ts.piece, ts.v_dtype
                    )
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
        pinned.close()
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
    found: list[tuple[str, Found]], tensors: pl.DataFrame, options: AnalyzeOptions
) -> pl.DataFrame | None:
    """The gradients table for every pair of analysed checkpoints whose stored steps differ by 1."""
    from adamscope.forensics import GradientOptions, pair_gradients
    from adamscope.tables.schema import names

    step_of = dict(
        tensors.select("checkpoint", "step")
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
        return None
    return pl.concat(frames, how="diagonal_relaxed").select(names("gradients"))


def _logs(path: Path, options: AnalyzeOptions) -> dict[str, pl.DataFrame]:
    """The losses table (and grad_norms, when per-layer norms were logged) from the logs given,
    or found in the run folder; nothing when there are none.

    Logs named with `logs=` must be readable (their errors are the user's to fix); logs found in
    the run folder are a bonus: one that cannot be read is skipped with a warning, never failing
    the analysis whose tables are already computed.
    """
    if options.logs:
        return _read_logs(list(options.logs), options)
    if not path.is_dir():
        return {}
    try:  # the folder itself: files found in it are not explicit, so ingest skips bad ones
        return _read_logs([path], options)
    except AdamscopeError as e:
        log.warning("training logs under %s not used: %s", path, e)
    except Exception as e:  # noqa: BLE001 - auto-found logs never fail an analysis
        log.debug("%s: reading training logs", path, exc_info=True)
        log.warning("training logs under %s not used (%s: %.200s)", path, type(e).__name__, e)
    return {}


def _read_logs(paths: list[Path], options: AnalyzeOptions) -> dict[str, pl.DataFrame]:
    from adamscope.logs import LAYER_NORM_PATTERN, ingest, ingest_layer_norms

    losses = ingest(
        paths, loss_key=options.loss_key, step_key=options.step_key, missing_ok=not options.logs
    )
    if not len(losses):
        return {}
    norms = ingest_layer_norms(
        paths,
        pattern=options.layer_norm_pattern or LAYER_NORM_PATTERN,
        step_key=options.step_key,
    )
    return {"losses": losses, **({"grad_norms": norms} if len(norms) else {})}


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
    MemoryError...) turned into one line naming the file, so --keep-going can go on; an
    AdamscopeError that does not name the file gets it in front."""
    try:
        return fn(*args, **kwargs)
    except AdamscopeError as e:
        if str(path) in str(e):
            raise
        # the engine names the tensor, not the file it came from
        raise type(e)(f"{path}: {e}") from e
    except Exception as e:  # noqa: BLE001 - re-raised as a user-facing error, traceback chained
        log.debug("%s: %s", path, what, exc_info=True)
        detail = " ".join(str(e).split())[:200]
        raise AdamscopeError(f"{path}: {what} ({type(e).__name__}: {detail})") from e


# the temp names this module and tables.io create inside OUT/.parts: `.<key>.<random>` folders
# (mkdtemp in _write_part) and `.<file>.<random>.tmp` files (io._tmp_beside)
_OUR_TEMP_DIR = re.compile(r"^\.[0-9a-f]{20}\.[A-Za-z0-9_]{1,16}$")
_OUR_TEMP_FILE = re.compile(r"^\.[A-Za-z0-9_.-]+\.[A-Za-z0-9_]{1,16}\.tmp$")


def _remove_temps(folder: Path) -> None:
    """Deletes the hidden temp folders/files an interrupted run left in `folder`: only names of
    the shapes we create, never through a symlink, nothing else."""
    for p in folder.iterdir():
        if p.is_symlink():
            continue
        if p.is_dir() and _OUR_TEMP_DIR.match(p.name):
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_file() and _OUR_TEMP_FILE.match(p.name):
            p.unlink(missing_ok=True)


def check_output(out: Path, *, inputs: Path) -> None:
    """Refuse an output folder that would write into the input or through a symlink: OUT (or
    its .parts scratch folder) a symlink, an existing file, the input itself or inside it.

    Raises:
        AdamscopeError: naming OUT and what is wrong with it.
    """
    out = Path(out)
    for p in (out, out / PARTS):
        if p.is_symlink():
            raise AdamscopeError(
                f"{p}: is a symlink; adamscope never writes or deletes through one (pass a real "
                "folder with -o)"
            )
    if out.exists() and not out.is_dir():
        raise AdamscopeError(f"{out}: exists and is not a folder; pass a folder with -o")
    if (out / PARTS).exists() and not (out / PARTS).is_dir():
        raise AdamscopeError(
            f"{out / PARTS}: exists and is not a folder; remove it or pass another -o"
        )
    src, dst = Path(inputs).resolve(), out.resolve()
    if dst == src or src in dst.parents:
        raise AdamscopeError(
            f"{out}: is inside the input {inputs}; the input is never modified: pass an output "
            "folder outside it with -o"
        )


def _relative(p: Path, root: Path) -> str:
    try:
        rel = p.resolve().relative_to(root.resolve())
    except ValueError:
        return str(p)
    except (OSError, RuntimeError):  # a link loop: named as it is in the folder
        try:
            rel = p.absolute().relative_to(root.absolute())
        except ValueError:
            return str(p)
    return str(rel) if str(rel) != "" else "."


def fingerprint(path: Path) -> str:
    """Key of a checkpoint for --resume: its resolved path and every file's size and mtime."""
    try:
        where = path.resolve(strict=True)
    except (OSError, RuntimeError):  # a broken link or a loop: its reader reports it
        return hashlib.sha1(str(path.absolute()).encode()).hexdigest()[:20]
    h = hashlib.sha1(str(where).encode())
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
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


def _merge(parts: list[dict[str, pl.DataFrame] | Path]) -> dict[str, pl.DataFrame]:
    """One frame per table from every checkpoint's frames (in memory, or a part folder in OUT)."""
    merged = {}
    for name in ("tensors", "layers", "histograms"):
        frames = [
            pl.read_parquet(p / f"{name}.parquet") if isinstance(p, Path) else p[name]
            for p in parts
            if isinstance(p, Path) or name in p
        ]
        empty = io.frame(name, [])
        if frames:  # parts of an older version may lack newer columns: nulls there
            df = pl.concat(frames, how="diagonal_relaxed")
            missing = [
                pl.lit(None, dt).alias(c) for c, dt in empty.schema.items() if c not in df.columns
            ]
            merged[name] = df.with_columns(missing).select(empty.columns)
        else:
            merged[name] = empty
    return merged


def conventions(convention: str) -> dict[str, str]:
    """The manifest's words for how u, r and std were computed (analyze's and the monitor's)."""
    return {
        "u": "m_hat / (sqrt(v_hat) + eps), torch order of operations"
        if convention == "torch"
        else "paper: (b1 m_hat) / (sqrt(b2 v_hat) + eps)",
        "r": "u with eps = 0; r = 0 where v == 0",
        "std": "population (ddof = 0)",
    }


def build_manifest(
    *,
    path: Path,
    found: list[Found],
    options: AnalyzeOptions,
    failures: list[tuple[Path, str]],
    world: int = 1,
) -> dict[str, Any]:
    """What was analysed, how, with which thresholds and versions (manifest.json)."""
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
        "conventions": conventions(options.stats.convention),
        "thresholds": asdict(options.stats.thresholds),
        "failures": [{"path": str(p), "error": e} for p, e in failures],
        "processes": world,
        "environment": {"torch": torch.__version__, "polars": pl.__version__},
    }
    return manifest
