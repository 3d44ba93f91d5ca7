"""`adamscope bench`: how fast `analyze` is next to the floor and a hand-written script.

One run generates (or takes) a nanoGPT-style checkpoint and measures, interleaved over `reps`
repetitions, each in a fresh subprocess (so peak RSS is that of one measurement):

- floor: our own reading path (`load_lazy` + the nanoGPT reader's chunked positional reads) and one
  `sum` per chunk of m and v on the device: every byte of the optimizer state read once;
- baseline: what a user would write: `torch.load` of the whole file, numpy u and r per tensor,
  `np.histogram` (256 bins) of u and r, Hartigan's dip of u and r on a 50k sample per tensor;
- analyze: `adamscope.api.analyze` with default statistics into a temporary folder.

Times are measured inside the child, from before the work to after it (imports done); the
interpreter's and imports' start-up is reported apart. Peak RSS is the child's own VmHWM
(/proc/self/status).

The generated checkpoint holds fp32 weights and synthetic Adam state with the statistics of
THEORY.md's reference table (not optimizer steps: a 250M-parameter AdamW step on 2 cores is slow):
per tensor a gradient RMS g (log-uniform in 1e-6..1e-2, so some tensors sit near eps), v = g**2 times
a log-normal factor, m = r * sqrt(v_hat) * (1 - b1**t) with r ~ N(0, 0.25) (healthy) or, for every
fifth weight matrix, r = +-1 + N(0, 0.1) (bimodal ratio).
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adamscope.config import OptionError

log = logging.getLogger(__name__)

KINDS = ("floor", "baseline", "analyze")
_STEP = 2000
_BETAS = (0.9, 0.95)
_EPS = 1e-8


# ---- checkpoint --------------------------------------------------------------------------------
def gpt_shapes(params: int) -> list[tuple[str, tuple[int, ...]]]:
    """nanoGPT parameter names and shapes (named_parameters() order) with about `params` elements."""
    vocab, block = (50304, 1024) if params >= 20_000_000 else (512, 64)
    best: tuple[float, int, int] | None = None
    for d in (32, 64, 128, 192, 256, 384, 512, 768, 1024, 1280, 1600, 2048, 2560, 3072):
        per_layer = 12 * d * d + 13 * d
        n = round((params - (vocab + block) * d - 2 * d) / per_layer)
        if n < 1:
            continue
        score = abs(math.log(n / max(d / 64, 1)))  # nanoGPT-like aspect: n_layer ~ d / 64
        if best is None or score < best[0]:
            best = (score, d, n)
    _, d, n_layer = best if best is not None else (0.0, 32, 1)
    shapes: list[tuple[str, tuple[int, ...]]] = [
        ("transformer.wte.weight", (vocab, d)),
        ("transformer.wpe.weight", (block, d)),
    ]
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        shapes += [
            (p + "ln_1.weight", (d,)),
            (p + "ln_1.bias", (d,)),
            (p + "attn.c_attn.weight", (3 * d, d)),
            (p + "attn.c_attn.bias", (3 * d,)),
            (p + "attn.c_proj.weight", (d, d)),
            (p + "attn.c_proj.bias", (d,)),
            (p + "ln_2.weight", (d,)),
            (p + "ln_2.bias", (d,)),
            (p + "mlp.c_fc.weight", (4 * d, d)),
            (p + "mlp.c_fc.bias", (4 * d,)),
            (p + "mlp.c_proj.weight", (d, 4 * d)),
            (p + "mlp.c_proj.bias", (d,)),
        ]
    shapes += [("transformer.ln_f.weight", (d,)), ("transformer.ln_f.bias", (d,))]
    return shapes


def make_checkpoint(path: Path, *, params: int, seed: int = 0) -> Path:
    """Write a nanoGPT-style ckpt.pt ({"model", "optimizer", "iter_num"}) of about `params` fp32
    parameters with synthetic Adam state (see the module docstring). Returns `path`."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    shapes = gpt_shapes(params)
    b1, b2 = _BETAS
    bc1, bc2 = 1 - b1**_STEP, 1 - b2**_STEP
    model: dict[str, Any] = {}
    state: dict[int, dict[str, Any]] = {}
    order = [n for n, s in shapes if len(s) >= 2] + [n for n, s in shapes if len(s) < 2]
    big = 0
    for pid, name in enumerate(order):
        shape = dict(shapes)[name]
        numel = math.prod(shape)
        w = torch.randn(shape, generator=gen).mul_(0.02)
        model[name] = w
        g = 10.0 ** (-6.0 + 4.0 * float(torch.rand((), generator=gen)))
        v = torch.randn(numel, generator=gen).mul_(0.5).exp_().mul_(g * g)
        bimodal = len(shape) >= 2 and big % 5 == 4
        big += len(shape) >= 2
        if bimodal:
            r = torch.randn(numel, generator=gen).mul_(0.1)
            r += torch.randint(0, 2, (numel,), generator=gen, dtype=torch.float32).mul_(2).sub_(1)
        else:
            r = torch.randn(numel, generator=gen).mul_(0.25)
        m = r.mul_(v.sqrt().div_(math.sqrt(bc2))).mul_(bc1)
        state[pid] = {
            "step": torch.tensor(float(_STEP)),
            "exp_avg": m.reshape(shape),
            "exp_avg_sq": v.reshape(shape),
        }
    model["lm_head.weight"] = model["transformer.wte.weight"]  # tied, saved once
    n_big = sum(1 for _, s in shapes if len(s) >= 2)
    group = {"lr": 6e-4, "betas": _BETAS, "eps": _EPS, "amsgrad": False, "maximize": False}
    group |= {"foreach": None, "capturable": False, "differentiable": False, "fused": None}
    groups = [
        {**group, "weight_decay": 0.1, "params": list(range(n_big))},
        {**group, "weight_decay": 0.0, "params": list(range(n_big, len(order)))},
    ]
    ckpt = {"model": model, "optimizer": {"state": state, "param_groups": groups}}
    ckpt["iter_num"] = _STEP
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def parse_count(text: str) -> int:
    """'250M' -> 250_000_000; '1.5B', '300k', '1234' likewise."""
    t = text.strip().upper()
    mult = {"K": 10**3, "M": 10**6, "G": 10**9, "B": 10**9}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise OptionError(f"{text!r} is not a count like 250M, 1B or 300k") from None


# ---- one measurement, in a child process ----------------------------------------------------------
def _child(kind: str, ckpt: str, device: str, out: str) -> None:
    """Runs in a fresh interpreter; writes {"work_s", "rss_bytes", "state_bytes"} to `out`."""
    t_enter = time.perf_counter()
    fn = {"floor": _floor, "baseline": _baseline, "analyze": _analyze}[kind]
    prepare = fn(Path(ckpt), device, prepare=True)
    t0 = time.perf_counter()
    state_bytes = fn(Path(ckpt), device, prepare=False, ctx=prepare)
    work = time.perf_counter() - t0
    rss = _peak_rss()
    data = {"work_s": work, "import_s": t0 - t_enter, "rss_bytes": rss, "state_bytes": state_bytes}
    Path(out).write_text(json.dumps(data))


def _peak_rss() -> int:
    """This process's peak RSS in bytes: VmHWM (ru_maxrss would include the parent's RSS at fork,
    which Linux carries over exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _floor(path: Path, device: str, *, prepare: bool, ctx: Any = None) -> Any:
    import torch

    from adamscope.config import ReaderOptions, StatsConfig
    from adamscope.readers.nanogpt import NanoGPTReader
    from adamscope.stats.engine import resolve_device

    if prepare:
        return resolve_device(device)
    dev = ctx
    n = StatsConfig().chunk_elems
    total = torch.zeros((), device=dev)
    nbytes = 0
    from adamscope.readers import buffers

    # on a GPU, reads into page-locked memory and one DMA per tensor chunk, as analyze reads
    with buffers.pinned_reads(enabled=dev.type == "cuda"):
        for ts in NanoGPTReader(path, options=ReaderOptions()).iter_tensors():
            for _, m, v, _ in ts.chunks(n):
                nbytes += m.numel() * m.element_size() + v.numel() * v.element_size()
                if dev.type == "cuda":
                    m = m.pin_memory().to(dev, non_blocking=True)
                    v = v.pin_memory().to(dev, non_blocking=True)
                total += m.sum() + v.sum()  # float32 sums: the floor is the read
    float(total)  # the sync
    return nbytes


def _baseline(path: Path, device: str, *, prepare: bool, ctx: Any = None) -> Any:
    import diptest
    import numpy as np
    import torch

    if prepare:
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    opt = ckpt["optimizer"]
    rng = np.random.default_rng(0)
    nbytes = 0
    for group in opt["param_groups"]:
        b1, b2 = group["betas"]
        eps = group["eps"]
        for pid in group["params"]:
            st = opt["state"][pid]
            t = float(st["step"])
            m = st["exp_avg"].numpy().ravel()
            v = st["exp_avg_sq"].numpy().ravel()
            nbytes += m.nbytes + v.nbytes
            m_hat = m / (1 - b1**t)
            denom = np.sqrt(v) / math.sqrt(1 - b2**t)
            u = m_hat / (denom + eps)
            with np.errstate(divide="ignore", invalid="ignore"):
                r = np.where(v > 0, m_hat / denom, 0.0)
            for x in (u, r):
                np.histogram(x, bins=256)
                _ = (x.mean(), x.std())
            idx = rng.choice(m.size, size=min(m.size, 50_000), replace=False)
            for x in (u, r):
                diptest.diptest(x[idx].astype(np.float64))
    return nbytes


def _analyze(path: Path, device: str, *, prepare: bool, ctx: Any = None) -> Any:
    import shutil

    from adamscope.api import AnalyzeOptions, analyze
    from adamscope.config import StatsConfig

    if prepare:
        import diptest  # noqa: F401 - the imports analyze makes lazily, outside the timing
        import pyarrow  # noqa: F401
        import torch  # noqa: F401

        import adamscope.readers.registry  # noqa: F401
        import adamscope.readers.torchzip  # noqa: F401
        import adamscope.stats.engine  # noqa: F401
        import adamscope.tables.layers  # noqa: F401
        from adamscope.stats import fused

        # numba's import and the kernels' load from its disk cache (~0.6 s per process; a compile
        # of ~5 s the first time ever): start-up, like the imports
        fused.available()
        return Path(tempfile.mkdtemp(prefix="adamscope-bench-"))
    out = ctx
    try:
        opts = AnalyzeOptions(out=out / "o", stats=StatsConfig(device=device))
        analyze(path, options=opts)
        import polars as pl

        df = pl.read_parquet(out / "o" / "tensors.parquet", columns=["numel"])
        return int(df["numel"].sum()) * 8  # fp32 m + v
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _measure(
    kind: str,
    ckpt: Path,
    device: str,
    *,
    module: str = "adamscope.perf.bench",
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One measurement in a fresh interpreter: `module`'s `_child(kind, ckpt, device, out)`."""
    fd, out = tempfile.mkstemp(prefix="adamscope-bench-", suffix=".json")
    os.close(fd)
    try:
        code = f"import sys; from {module} import _child; _child(*sys.argv[1:])"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", code, kind, str(ckpt), device, out],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            from adamscope.errors import AdamscopeError

            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            raise AdamscopeError(f"bench: the {kind} measurement failed: {tail[0]}")
        data = json.loads(Path(out).read_text())
    finally:
        Path(out).unlink(missing_ok=True)
    data["startup_s"] = wall - data["work_s"]
    return data


# ---- results -------------------------------------------------------------------------------------
@dataclass
class Stat:
    """Median over the repetitions of one kind of measurement."""

    kind: str
    work_s: float
    startup_s: float
    rss_bytes: int
    state_bytes: int
    runs: list[float] = field(default_factory=list)

    @property
    def gbps(self) -> float:
        return self.state_bytes / self.work_s / 1e9 if self.work_s > 0 else math.nan


@dataclass
class ScalePoint:
    params: int
    file_bytes: int
    analyze: Stat
    floor: Stat


@dataclass
class BenchResult:
    checkpoint: Path
    params: int
    file_bytes: int
    device: str
    reps: int
    stats: dict[str, Stat]
    scale: list[ScalePoint] = field(default_factory=list)

    def ratio(self, a: str, b: str) -> float:
        return self.stats[a].work_s / self.stats[b].work_s

    def report(self) -> str:
        """A plain-text report: one line per measurement, the ratios, the scaling table."""
        lines = [
            f"checkpoint {self.checkpoint} ({self.params / 1e6:.1f}M params, "
            f"{self.file_bytes / 1e9:.2f} GB), device {self.device}, median of {self.reps} "
            "interleaved runs, each in a fresh process",
            f"{'':<9} {'time (s)':>9} {'GB/s m+v':>9} {'peak RSS':>10} {'start-up':>9}  runs",
        ]
        for k in KINDS:
            s = self.stats.get(k)
            if s is None:
                continue
            runs = " ".join(f"{x:.2f}" for x in s.runs)
            lines.append(
                f"{k:<9} {s.work_s:>9.2f} {s.gbps:>9.2f} {s.rss_bytes / 2**30:>7.2f} GB "
                f"{s.startup_s:>8.2f}s  [{runs}]"
            )
        if "analyze" in self.stats and "floor" in self.stats:
            lines.append(f"analyze / floor    = {self.ratio('analyze', 'floor'):.2f}")
        if "analyze" in self.stats and "baseline" in self.stats:
            lines.append(f"analyze / baseline = {self.ratio('analyze', 'baseline'):.3f}")
        if self.scale:
            lines.append("scaling (analyze, and floor, median of reps):")
            lines.append(
                f"{'params':>8} {'file GB':>8} {'analyze s':>10} {'GB/s':>6} {'peak RSS':>9} "
                f"{'floor s':>8} {'floor RSS':>9}"
            )
            for p in self.scale:
                lines.append(
                    f"{p.params / 1e6:>7.1f}M {p.file_bytes / 1e9:>8.2f} {p.analyze.work_s:>10.2f} "
                    f"{p.analyze.gbps:>6.2f} {p.analyze.rss_bytes / 2**30:>6.2f} GB "
                    f"{p.floor.work_s:>8.2f} {p.floor.rss_bytes / 2**30:>6.2f} GB"
                )
        return "\n".join(lines)


def _median(kind: str, runs: list[dict[str, Any]]) -> Stat:
    return Stat(
        kind=kind,
        work_s=statistics.median(r["work_s"] for r in runs),
        startup_s=statistics.median(r["startup_s"] for r in runs),
        rss_bytes=int(statistics.median(r["rss_bytes"] for r in runs)),
        state_bytes=runs[0]["state_bytes"],
        runs=[r["work_s"] for r in runs],
    )


def _warm(path: Path) -> None:
    """Read the file once so every measurement starts from a warm page cache."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(1 << 24)
        while f.readinto(buf):
            pass


def _interleaved(
    kinds: tuple[str, ...], ckpt: Path, device: str, reps: int, say: Any
) -> dict[str, Stat]:
    _warm(ckpt)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for rep in range(reps):
        order = kinds[rep % len(kinds) :] + kinds[: rep % len(kinds)]  # rotate the order
        for k in order:
            r = _measure(k, ckpt, device)
            runs[k].append(r)
            say(f"  rep {rep + 1}/{reps} {k}: {r['work_s']:.2f} s, {r['rss_bytes'] / 2**30:.2f} GB")
    return {k: _median(k, v) for k, v in runs.items()}


def run_bench(
    *,
    params: int = 250_000_000,
    device: str = "cpu",
    reps: int = 3,
    workdir: Path | None = None,
    checkpoint: Path | None = None,
    sizes: list[int] | None = None,
    kinds: tuple[str, ...] = KINDS,
    say: Any = None,
) -> BenchResult:
    """Generate (or take) a checkpoint and measure floor, baseline and analyze on it, interleaved.

    Args:
        params: size of the generated checkpoint (ignored with `checkpoint`).
        device: where the floor's sums and analyze's reductions run (cpu, cuda, auto).
        reps: repetitions of every measurement; medians are reported.
        workdir: where generated checkpoints go (kept for the next run); default a temp folder.
        checkpoint: an existing nanoGPT-style ckpt.pt instead of a generated one.
        sizes: parameter counts of generated checkpoints for the scaling table (analyze and floor).
    """
    say = say or (lambda s: log.info("%s", s))
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="adamscope-bench-")
        workdir = Path(tmp.name)
    try:

        def generated(p: int) -> Path:
            path = Path(workdir) / f"nanogpt-{p}" / "ckpt.pt"
            if not path.exists():
                say(f"generating {path} ({p / 1e6:.1f}M params)")
                make_checkpoint(path.with_suffix(".tmp"), params=p)
                path.with_suffix(".tmp").replace(path)
            return path

        ckpt = checkpoint if checkpoint is not None else generated(params)
        say(f"measuring {', '.join(kinds)} on {ckpt}")
        stats = _interleaved(kinds, ckpt, device, reps, say)
        n = stats[kinds[0]].state_bytes // 8
        result = BenchResult(ckpt, n, ckpt.stat().st_size, device, reps, stats)
        for p in sizes or []:
            path = generated(p)
            say(f"scaling: {p / 1e6:.1f}M params")
            st = _interleaved(("floor", "analyze"), path, device, reps, say)
            result.scale.append(
                ScalePoint(
                    st["analyze"].state_bytes // 8, path.stat().st_size, st["analyze"], st["floor"]
                )
            )
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()
