"""`Monitor`: analyze's tables from inside a training run, every N optimizer steps.

A post-step hook on the optimizer reads the live Adam state (exp_avg, exp_avg_sq, step), p.grad
and the parameters where they live (CPU or GPU: no host copy of whole tensors) and folds them with
the engine `analyze` uses (stats.engine.summarize) plus the live-only sums of monitor.live. The
rows (dips, the null, the stage rule: tables.checkpoint, the same code analyze's tables come from)
are built and written on a background thread, one Parquet part per table per flush under
OUT/live/, so training goes on meanwhile and a crash loses at most the flush in progress.
`adamscope.load(OUT)` (and figures, heatmap, report) stack the parts.

Under torch.distributed: DTensor parameters (FSDP2) are summarised rank-locally as pieces of the
global tensor (replicas of a shard on a Replicate mesh dimension count once); plain parameters
on several ranks are taken as replicas (DDP) and shared out by position. Sketches travel to
rank 0, which alone writes. Every rank must step (and so reach the hook) together, as they do.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from adamscope._version import __version__
from adamscope.config import OptionError, StageThresholds, StatsConfig
from adamscope.errors import AdamscopeError

log = logging.getLogger(__name__)

LIVE = "live"  # OUT/live/<table>/step-<t>.parquet
Distributed = Literal["auto", "replicated", "off"]


def _snapshot_budget(entries: list[_Entry]) -> int:
    """Bytes a flush may copy: a quarter of the free memory of the GPU the state lives on, else
    2 GiB of host memory."""
    import torch

    dev = entries[0].m.device if entries else None
    if dev is not None and dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free) // 4
    return 2 << 30


def _unwrap(model: Any) -> Any:
    """The module whose parameter names the training code uses: through DDP/DataParallel
    (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    for _ in range(8):
        inner = getattr(model, "_orig_mod", None)
        if inner is None and type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
            inner = getattr(model, "module", None)
        if inner is None:
            return model
        model = inner
    return model


def _unwrap_optimizer(opt: Any) -> Any:
    """The torch optimizer inside accelerate's AcceleratedOptimizer (`.optimizer`) or
    Lightning's LightningOptimizer (`._optimizer`)."""
    import torch

    for _ in range(8):
        if isinstance(opt, torch.optim.Optimizer) and type(opt).__name__ not in (
            "AcceleratedOptimizer",
            "LightningOptimizer",
        ):
            return opt
        inner = getattr(opt, "optimizer", None) or getattr(opt, "_optimizer", None)
        if inner is None or inner is opt:
            return opt
        opt = inner
    return opt


# dip sample per tensor in the monitor (analyze: 65,536): Hartigan's dip costs ~2.8 ms on 65,536
# points and holds the GIL, ~0.6 ms on 16,384, where the null dip (~0.004) is still far below the
# threshold 0.01; judge_from_step stays the one for 65,536 points (later, so conservative)
MONITOR_DIP_SAMPLE = 16384


def _stats_config(kw: dict[str, Any]) -> StatsConfig:
    kw = {"dip_sample": MONITOR_DIP_SAMPLE, **kw}
    stats = {f.name for f in fields(StatsConfig)}
    thr = {f.name for f in fields(StageThresholds)}
    s, t = {}, {}
    for k, v in kw.items():
        if k in stats:
            s[k] = v
        elif k in thr:
            t[k] = v
        else:
            known = ", ".join(sorted((stats | thr) - {"thresholds"}))
            raise OptionError(f"unknown monitor option {k!r}; options are: {known}")
    cfg = StatsConfig(**s)
    return replace(cfg, thresholds=replace(cfg.thresholds, **t)) if t else cfg


class Monitor:
    """Writes analyze's tensors/layers/histograms tables for a live optimizer every `every` steps.

    Use `attach(optimizer, model=model, out="mon/")`; `close()` (or the `with` block) waits for the
    last flush and removes the hook. `log(step, loss)` records the loss curve (losses table).
    """

    def __init__(
        self,
        optimizer: Any,
        *,
        out: str | Path,
        model: Any = None,
        every: int = 10,
        tensor_histograms: bool = False,
        background: bool = True,
        distributed: Distributed = "auto",
        snapshot: Literal["auto", "copy", "inline"] = "auto",
        snapshot_bytes: int | None = None,
        hook: bool = True,
        **options: Any,
    ) -> None:
        import torch

        if not isinstance(every, int) or every < 1:
            raise OptionError(f"every {every!r}: needs an integer >= 1 (optimizer steps)")
        if distributed not in ("auto", "replicated", "off"):
            raise OptionError(f"distributed {distributed!r}: choose auto, replicated or off")
        self.optimizer = _unwrap_optimizer(optimizer)
        if not isinstance(self.optimizer, torch.optim.Optimizer):
            raise AdamscopeError(
                f"{type(optimizer).__name__}: not a torch.optim.Optimizer; attach to the Adam/AdamW "
                "the training loop steps"
            )
        self.out = Path(out)
        self.every = every
        self.cfg = _stats_config(options)
        self.tensor_histograms = tensor_histograms
        self.distributed = distributed
        if snapshot not in ("auto", "copy", "inline"):
            raise OptionError(f"snapshot {snapshot!r}: choose auto, copy or inline")
        self.snapshot = snapshot
        self.snapshot_bytes = None if snapshot_bytes is None else int(snapshot_bytes)
        self.names = _param_names(self.optimizer, model)
        self.dist = _dist(distributed)
        self.last_step: int | None = None
        self.flushes = 0
        self.seconds = 0.0  # spent in the training thread (the hook), for the overhead report
        self._losses: list[tuple[int, Any, Any, Any]] = []
        self._writer = _Writer(self, background=background) if self.dist.is_main else None
        self._handle = self.optimizer.register_step_post_hook(self._hook) if hook else None

    # ---- the hook ------------------------------------------------------------------------------
    def _hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.observe()

    def current_step(self) -> int | None:
        """Adam's t of the first parameter with state (None before the first step)."""
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                st = self.optimizer.state.get(p)
                if st and "step" in st:
                    s = st["step"]
                    return int(s.item() if hasattr(s, "item") else s)
        return None

    def observe(self, *, force: bool = False) -> bool:
        """Flush when the optimizer's step is a multiple of `every` (or with `force`); True when a
        flush was made. Called by the hook after every optimizer step."""
        t = self.current_step()
        if t is None or t == self.last_step or not (force or t % self.every == 0):
            return False
        t0 = time.perf_counter()
        self.last_step = t
        entries = self._entries()
        losses, self._losses = self._losses, []
        if self._copy(entries):
            # one process: a copy of the state, summarised on the writer thread with the rows;
            # the previous flush is finished first, so one copy exists at a time (a writer slower
            # than `every` steps makes training wait here rather than memory grow)
            self._writer.wait()  # type: ignore[union-attr]
            snap = [e.copy() for e in entries]
            self._writer.submit(t, snap, losses)  # type: ignore[union-attr]
        else:
            items = summarise(entries, self.cfg, inline=False)
            gathered = self.dist.gather(items)
            if self._writer is not None and gathered is not None:
                merged = [it for part in gathered for it in part]
                merged.sort(key=lambda it: (it[0], (it[1].piece or (0, 0))[0]))
                self._writer.submit(t, merged, losses)
        self.flushes += 1
        self.seconds += time.perf_counter() - t0
        return True

    def _copy(self, entries: list[_Entry]) -> bool:
        """Whether this flush copies the state and leaves all the work to the writer thread."""
        if self.snapshot == "inline" or self.dist.active or self._writer is None:
            return False
        if not self._writer.background:
            return False
        if self.snapshot == "copy":
            return True
        need = sum(e.nbytes() for e in entries)
        if self.snapshot_bytes is not None:
            return need <= self.snapshot_bytes
        return need <= _snapshot_budget(entries)

    def log(self, step: int, loss: Any, *, grad_norm: Any = None, lr: Any = None) -> None:
        """Record the training loss of `step` (a float or a 0-d tensor: read at the next flush,
        so a GPU loss costs no synchronisation per step). Rank 0's values are written."""
        if self.dist.is_main:
            self._losses.append((int(step), _detach(loss), _detach(grad_norm), _detach(lr)))

    def _entries(self) -> list[_Entry]:
        """This rank's share of the tensors, as views of the live state (nothing copied)."""
        from adamscope.readers.optim_state import hyper_params

        out = []
        pos = -1
        adamw = type(self.optimizer).__name__ == "AdamW"
        for gi, group in enumerate(self.optimizer.param_groups):
            hp = None
            for p in group["params"]:
                pos += 1
                st = self.optimizer.state.get(p)
                if not st or "exp_avg" not in st or "exp_avg_sq" not in st:
                    continue
                local = _local(p, st, self.dist, pos, self.distributed)
                if local is None:
                    continue
                if hp is None:
                    hp = hyper_params(
                        {k: val for k, val in group.items() if k != "params"},
                        source=f"param group {gi}",
                    )
                    if hp.decoupled_weight_decay is None:  # torch.optim.AdamW keeps no flag
                        hp = replace(hp, decoupled_weight_decay=adamw)
                step = st["step"]
                m, v, vmax, g, theta, piece = local
                out.append(
                    _Entry(
                        pos=pos,
                        name=self.names[pos],
                        shape=tuple(p.shape),
                        step=float(step.item() if hasattr(step, "item") else step),
                        hp=hp,
                        m=m,
                        v=v,
                        vmax=vmax if hp.amsgrad else None,
                        g=g if g is not None and g.shape == m.shape else None,
                        theta=theta,
                        piece=piece,
                    )
                )
        return out

    # ---- ending --------------------------------------------------------------------------------
    def flush(self) -> None:
        """Wait until every flush so far is on disk (re-raises a writer error)."""
        if self._writer is not None:
            self._writer.wait()

    def close(self) -> None:
        """Remove the hook and wait for the last flush; the tables in OUT are then complete."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self._writer is not None:
            if self._losses:
                self._writer.submit(None, [], self._losses)
                self._losses = []
            self._writer.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def writer_cpu_s(self) -> float:
        """CPU seconds the writer spent so far (summaries of copied state, rows, files)."""
        return self._writer.cpu_s if self._writer is not None else 0.0

    def __repr__(self) -> str:
        return (
            f"Monitor(out={str(self.out)!r}, every={self.every}, flushes={self.flushes}, "
            f"last_step={self.last_step})"
        )


def attach(
    optimizer: Any,
    *,
    out: str | Path,
    model: Any = None,
    every: int = 10,
    **options: Any,
) -> Monitor:
    """Monitor a torch Adam/AdamW: every `every` optimizer steps, the same tensors/layers/histograms
    rows `adamscope analyze` writes for a checkpoint at that step (plus the live columns), appended
    to the tables in `out`.

    Args:
        optimizer: the optimizer the loop steps (accelerate/Lightning wrappers are unwrapped).
        out: a new folder, or one a monitor wrote before (parts of re-done steps are replaced).
        model: names from `model.named_parameters()` (DDP / torch.compile wrappers unwrapped);
            else the groups' `param_names` (torch >= 2.6 with named parameters), else `param.<i>`.
        every: optimizer steps between flushes (the hook sees optimizer steps only, so gradient
            accumulation and skipped fp16 steps are handled).
        options: tensor_histograms (False), background (True: rows and files on a thread),
            snapshot ("auto": in one process, copy the state (m, v, grad, param) when the copy
            fits snapshot_bytes (default: a quarter of the free GPU memory, or 2 GiB on CPU)
            and leave every reduction to the writer thread, so the hook costs a copy;
            "inline": reduce in the hook; "copy": always copy),
            distributed ("auto" | "replicated" | "off"), and any StatsConfig or StageThresholds
            field (dip_sample=..., convention=..., suppression=...).

    Raises:
        AdamscopeError: not an optimizer, `out` holds analyze's tables, or an option is wrong.
    """
    return Monitor(optimizer, out=out, model=model, every=every, **options)


# ---- the work of a flush -----------------------------------------------------------------------
@dataclass
class _Entry:
    """One parameter tensor (or this rank's shard of it) at a flush: views of the live state,
    or a copy of them (`copy`)."""

    pos: int
    name: str
    shape: tuple[int, ...]
    step: float
    hp: Any
    m: Any
    v: Any
    vmax: Any
    g: Any
    theta: Any
    piece: tuple[int, int] | None

    def nbytes(self) -> int:
        xs = (self.m, self.v, self.vmax, self.g, self.theta)
        return sum(x.numel() * x.element_size() for x in xs if x is not None)

    def copy(self) -> _Entry:
        def c(x: Any) -> Any:
            return None if x is None else x.detach().clone()

        return replace(
            self, m=c(self.m), v=c(self.v), vmax=c(self.vmax), g=c(self.g), theta=c(self.theta)
        )


def summarise(entries: list[_Entry], cfg: StatsConfig, *, inline: bool) -> list[tuple]:
    """(position, TensorMeta, TensorSketch, LiveSketch | None) per entry, by the engine analyze
    uses. `inline`: on the writer thread, one worker, torch's thread count left alone (it is
    process-wide, and training owns it)."""
    import contextlib

    import torch

    from adamscope.monitor.live import live_sketch
    from adamscope.stats.adam import coefficients
    from adamscope.stats.engine import cpu_workers, summarize, tensor_state_from_tensors
    from adamscope.tables.checkpoint import TensorMeta

    out = []
    with torch.no_grad(), contextlib.nullcontext() if inline else cpu_workers():
        for e in entries:
            ts = tensor_state_from_tensors(
                e.name, e.m, e.v, step=e.step, hp=e.hp, vmax=e.vmax, piece=e.piece
            )
            ts.shape = e.shape
            dev = e.m.device
            c = replace(cfg, device=str(dev) if dev.type == "cuda" else "cpu")
            sk = summarize(ts, c, workers=1 if inline else None)
            live = None
            if e.g is not None:
                k = coefficients(e.hp, e.step, convention=c.convention, name=e.name)
                live = live_sketch(
                    e.m,
                    e.v,
                    e.vmax,
                    e.g,
                    e.theta,
                    k,
                    lr=float(e.hp.lr or 0.0),
                    decoupled_wd=(e.hp.weight_decay or 0.0) if e.hp.decoupled_weight_decay else 0.0,
                    chunk_elems=c.chunk_elems,
                )
            meta = TensorMeta(e.name, e.shape, ts.dtype, e.step, e.hp, e.piece)
            out.append((e.pos, meta, sk, live))
    return out


# ---- helpers -----------------------------------------------------------------------------------
def _detach(x: Any) -> Any:
    return x.detach() if hasattr(x, "detach") else x


def _as_float(x: Any) -> float | None:
    if x is None:
        return None
    try:
        return float(x.item() if hasattr(x, "item") else x)
    except (TypeError, ValueError, RuntimeError):
        return None


def _param_names(optimizer: Any, model: Any) -> list[str]:
    by_id: dict[int, str] = {}
    if model is not None:
        for n, p in _unwrap(model).named_parameters():
            by_id.setdefault(id(p), n)
    names: list[str] = []
    for group in optimizer.param_groups:
        given = group.get("param_names")
        for i, p in enumerate(group["params"]):
            name = by_id.get(id(p))
            if name is None and given is not None and i < len(given):
                name = str(given[i])
            names.append(name if name is not None else f"param.{len(names)}")
    dup = [n for n, c in Counter(names).items() if c > 1]
    if dup:
        raise AdamscopeError(f"monitor: parameter name {dup[0]!r} appears twice in the optimizer")
    return names


def _dist(mode: Distributed) -> Any:
    from adamscope.pipeline.distributed import Dist, current

    return Dist() if mode == "off" else current()


def _local(p: Any, st: dict, d: Any, pos: int, mode: Distributed) -> tuple | None:
    """(m, v, vmax, grad, param, piece) of this rank's share of parameter `p`, or None."""
    m, v, vmax = st["exp_avg"], st["exp_avg_sq"], st.get("max_exp_avg_sq")
    g, theta = p.grad, p
    placements = getattr(p, "placements", None)
    if placements is not None and hasattr(p, "to_local"):  # a DTensor (FSDP2, TP)
        mesh = p.device_mesh
        for dim, pl in enumerate(placements):
            if pl.is_replicate() and mesh.get_local_rank(dim) != 0:
                return None  # a replica of a shard another rank counts
        loc = [x.to_local() if hasattr(x, "to_local") else x for x in (m, v, vmax, g, theta)]
        m, v, vmax, g, theta = loc
        total = math.prod(p.shape)
        piece = (_flat_offset(p), total) if m.numel() < total else None
        if m.numel() == 0:
            return None
        return m, v, vmax, g, theta, piece
    if d.active and mode in ("auto", "replicated") and pos % d.world != d.rank:
        return None
    return m, v, vmax, g, theta, None


def _flat_offset(p: Any) -> int:
    """Flat offset of a DTensor's local shard in the global tensor: exact for shards of dim 0
    (FSDP2); for other shardings the shard is not one flat range, so the offset only keeps the
    pieces' dip samples apart (every statistic but the dip is exact either way)."""
    chunks = p.__create_chunk_list__()
    off, size = tuple(chunks[0].offsets), tuple(chunks[0].sizes)
    shape = tuple(p.shape)
    flat, stride = 0, 1
    for i in reversed(range(len(shape))):
        flat += off[i] * stride
        stride *= shape[i]
    if size[1:] != shape[1:]:
        log.warning("monitor: a parameter sharded beyond dim 0: its dip sample is approximate")
    return flat


def _steps_before(out: Path) -> list[int]:
    """The steps a monitor already wrote into `out` (its manifest), so a restart keeps them."""
    import json

    from adamscope.tables.model import live_steps

    try:
        m = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return []
    return (
        sorted(live_steps(m) or ()) if isinstance(m, dict) and m.get("source") == "monitor" else []
    )


# ---- the writer --------------------------------------------------------------------------------
class _Writer:
    """Builds rows from sketches and writes the parts, on one background thread (or inline)."""

    def __init__(self, mon: Monitor, *, background: bool) -> None:
        self.mon = mon
        out = mon.out
        if (out / "tensors.parquet").exists():
            raise AdamscopeError(
                f"{out}: holds analyze's tables (tensors.parquet); monitor into another folder"
            )
        for p in (out, out / LIVE):
            if p.is_symlink():
                raise AdamscopeError(f"{p}: is a symlink; adamscope never writes through one")
            if p.exists() and not p.is_dir():
                raise AdamscopeError(f"{p}: exists and is not a folder; pass another out=")
        (out / LIVE).mkdir(parents=True, exist_ok=True)
        # (level, key) -> (last judged verdict, its step)
        self.previous: dict[tuple[str, str], tuple[str, int]] = {}
        self.steps: list[int] = _steps_before(out)  # a restarted run keeps what is on disk
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.error: BaseException | None = None
        self.q: queue.Queue[Any] = queue.Queue(maxsize=1)
        self.thread = None
        self.cpu_s = 0.0  # CPU time the writer thread spent (for the overhead report)
        self.background = background
        if background:
            self.thread = threading.Thread(target=self._main, name="adamscope-monitor", daemon=True)
            self.thread.start()
        self._manifest()

    def submit(self, step: int | None, items: list, losses: list) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            raise AdamscopeError(f"monitor: writing {self.mon.out} failed: {err}") from err
        job = (step, items, losses)
        if self.thread is None:
            c0 = time.thread_time()
            self._write(*job)
            self.cpu_s += time.thread_time() - c0
        else:
            self.q.put(job)  # waits while the previous flush is still being written

    def _main(self) -> None:
        while True:
            job = self.q.get()
            try:
                if job is None:
                    return
                c0 = time.thread_time()
                self._write(*job)
                self.cpu_s += time.thread_time() - c0
            except BaseException as e:  # noqa: BLE001 - re-raised on the training thread
                log.error("monitor: %s", e)
                self.error = e
            finally:
                job = None  # the state copy goes before the next flush is made  # noqa: F841
                self.q.task_done()

    def wait(self) -> None:
        if self.thread is not None:
            self.q.join()
        if self.error is not None:
            err, self.error = self.error, None
            raise AdamscopeError(f"monitor: writing {self.mon.out} failed: {err}") from err

    def close(self) -> None:
        if self.thread is not None:
            self.q.put(None)
            self.thread.join()
            self.thread = None
        self.wait()

    def _write(self, step: int | None, items: list, losses: list) -> None:
        from adamscope.tables import io
        from adamscope.tables.checkpoint import CheckpointTables

        live = self.mon.out / LIVE
        if losses:
            rows = []
            for s, loss, gn, lr in losses:
                val = _as_float(loss)
                rows.append(
                    {
                        "step": s,
                        "loss": val,
                        "perplexity": math.exp(min(val, 700.0)) if val is not None else None,
                        "grad_norm": _as_float(gn),
                        "lr": _as_float(lr),
                        "source": "monitor",
                    }
                )
            io.write_parquet(
                io.frame("losses", rows), live / "losses" / f"steps-{rows[0]['step']:09d}.parquet"
            )
        if step is None or not items:
            return
        ct = CheckpointTables(
            rel=f"live@{step}", path=self.mon.out, tensor_histograms=self.mon.tensor_histograms
        )
        if items and isinstance(items[0], _Entry):  # a copy of the state: summarise it here
            items = summarise(items, self.mon.cfg, inline=True)
        for _, meta, sk, lv in items:
            ct.add(meta, sk, lv)
        frames = ct.frames()
        thr = self.mon.cfg.thresholds
        frames["tensors"] = self._judge(frames["tensors"], "tensor", thr)
        frames["layers"] = self._judge(frames["layers"], "layer", thr)
        part = f"step-{step:09d}.parquet"
        for name in ("tensors", "layers", "histograms"):  # histograms first on disk is harmless
            io.write_parquet(frames[name], live / name / part)
        self.steps = sorted(set(self.steps) | {step})
        self._manifest()  # after every part of the flush: load() counts a flush from here

    def _judge(self, df: Any, key: str, thr: StageThresholds) -> Any:
        """The verdicts with this run's history (as `load` re-judges the stacked parts)."""
        import polars as pl

        from adamscope.stats.stages import verdict
        from adamscope.tables.rows import reason

        stages, why = [], []
        for r in df.iter_rows(named=True):
            k = (key, r[key])
            prev = self.previous.get(k)
            v = verdict(
                r["stage_snapshot"],
                None if prev is None else prev[0],
                suppression=r["suppression"],
                thresholds=thr,
            )
            r["stage"] = v
            stages.append(v)
            why.append(reason(r, step=r["step"], previous=prev, thresholds=thr))
            if v not in (None, "too_early"):
                self.previous[k] = (v, int(r["step"]))
        return df.with_columns(
            stage=pl.Series(stages, dtype=pl.Utf8), stage_reason=pl.Series(why, dtype=pl.Utf8)
        )

    def _manifest(self) -> None:
        import polars as pl
        import torch

        from adamscope.pipeline.run import conventions
        from adamscope.tables import io

        cfg = self.mon.cfg
        io.write_json(
            {
                "tool": "adamscope",
                "version": __version__,
                "created": self.started,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "source": "monitor",
                "live": {
                    "every": self.mon.every,
                    "steps": self.steps,
                    "optimizer": type(self.mon.optimizer).__name__,
                    "processes": self.mon.dist.world,
                },
                "inputs": {"path": str(self.mon.out.resolve()), "checkpoints": []},
                "options": {**cfg.to_dict(), "tensor_histograms": self.mon.tensor_histograms},
                "conventions": conventions(cfg.convention),
                "thresholds": asdict(cfg.thresholds),
                "failures": [],
                "environment": {"torch": torch.__version__, "polars": pl.__version__},
            },
            self.mon.out / "manifest.json",
        )
