"""`adamscope bench --shards 8,16,32,64`: analyze on checkpoints of many rank files, next to the
frameworks' own converters on the same checkpoints.

For every rank count W it generates (`shard_checkpoints`) a DeepSpeed ZeRO-3 checkpoint of W rank
files and a DCP checkpoint of W `.distcp` files, all of the same parameters (so the total size is
the same at every W), and measures, interleaved over `reps` repetitions, each in a fresh
interpreter (imports done before the clock starts, as in `bench`):

- read: our reader streaming every byte of m and v (`iter_tensors` + `chunks`, one sum per chunk):
  the floor of the format on our reading path;
- analyze: `adamscope.api.analyze` with default statistics into a temporary folder;
- ds_to_universal (ZeRO-3, largest W): DeepSpeed's converter as its command line runs it (its
  `main`, default 4 extract / 2 merge worker processes), which is what a user does today before
  any statistic is computed; skipped with a message when deepspeed does not import
  (`--deepspeed-path` adds a folder to the children's PYTHONPATH);
- dcp_to_torch_save (DCP, largest W): torch's converter to one torch.save file.

Peak RSS is VmHWM for one process; for the converter it is the sum over its process tree,
sampled every 50 ms (its workers are processes). Extra disk is what a run leaves in its output
folder (the converters' outputs; analyze's tables are not counted: they are the product), and
for ds_to_universal the largest size of its output folder seen while it runs (sampled every
0.5 s: it writes every fragment to a temporary folder first).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adamscope.perf.bench import _analyze, _measure, _peak_rss, _warm, parse_count

log = logging.getLogger(__name__)

FORMATS = ("zero3", "dcp")
CONVERTER = {"zero3": "ds_to_universal", "dcp": "dcp_to_torch_save"}
_DS_HINT = "DS_BUILD_OPS=0 pip install deepspeed (or --deepspeed-path DIR)"


# ---- one measurement, in a child process --------------------------------------------------------
def _child(kind: str, ckpt: str, device: str, out: str) -> None:
    """Runs in a fresh interpreter (`bench._measure`); writes the measurement's JSON to `out`.
    Reductions run on the CPU (`device` is bench's argument, unused here)."""
    path = Path(ckpt)
    fn = {
        "read": _read,
        "analyze": _analyze_here,
        "ds_to_universal": _ds_to_universal,
        "dcp_to_torch_save": _dcp_to_torch_save,
    }[kind]
    ctx = fn(path, prepare=True)
    t0 = time.perf_counter()
    data = fn(path, prepare=False, ctx=ctx)
    data["work_s"] = time.perf_counter() - t0
    data.setdefault("rss_bytes", _peak_rss())
    Path(out).write_text(json.dumps(data))


def _read(path: Path, *, prepare: bool, ctx: Any = None) -> Any:
    import torch

    from adamscope.readers.registry import open_checkpoint

    if prepare:
        import adamscope.readers.dcp  # noqa: F401 - imports outside the timing
        import adamscope.readers.deepspeed  # noqa: F401

        return None
    nbytes, total = 0, torch.zeros(())
    with torch.no_grad():
        for ts in open_checkpoint(path).iter_tensors():
            for _, m, v, _ in ts.chunks(1 << 22):
                nbytes += m.numel() * m.element_size() + v.numel() * v.element_size()
                total += m.sum() + v.sum()
    return {"state_bytes": nbytes, "extra_disk": 0}


def _analyze_here(path: Path, *, prepare: bool, ctx: Any = None) -> Any:
    if prepare:
        return _analyze(path, "cpu", prepare=True)
    return {"state_bytes": _analyze(path, "cpu", prepare=False, ctx=ctx), "extra_disk": 0}


def _ds_to_universal(path: Path, *, prepare: bool, ctx: Any = None) -> Any:
    """DeepSpeed's converter, its `main` run in this process as its command line runs it (with
    its default worker processes, forked from here: their imports are done)."""
    from deepspeed.checkpoint import ds_to_universal  # the import, outside the timing

    if prepare:
        return Path(tempfile.mkdtemp(prefix="adamscope-ds-", dir=path.parent))
    tag = (path / "latest").read_text().strip()
    argv = sys.argv
    sys.argv = ["ds_to_universal", "--input_folder", str(path / tag)]
    sys.argv += ["--output_folder", str(ctx / tag)]
    try:
        args = ds_to_universal.parse_arguments()
        with _TreeSampler(ctx) as sampler:
            ds_to_universal.main(args)
        return {
            "state_bytes": _state_bytes(path),
            "extra_disk": _du(ctx),
            "peak_disk": max(sampler.peak_disk, _du(ctx)),
            "rss_bytes": max(sampler.peak_rss, _peak_rss()),
        }
    finally:
        sys.argv = argv
        shutil.rmtree(ctx, ignore_errors=True)


def _dcp_to_torch_save(path: Path, *, prepare: bool, ctx: Any = None) -> Any:
    if prepare:
        from torch.distributed.checkpoint import format_utils  # noqa: F401

        return Path(tempfile.mkdtemp(prefix="adamscope-dcp-", dir=path.parent))
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    try:
        dcp_to_torch_save(str(path), str(ctx / "checkpoint.pt"))
        return {"state_bytes": _state_bytes(path), "extra_disk": _du(ctx)}
    finally:
        shutil.rmtree(ctx, ignore_errors=True)


def _state_bytes(path: Path) -> int:
    from adamscope.readers.registry import open_checkpoint

    return open_checkpoint(path).describe().n_params * 8  # fp32 m + v


def _du(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:  # removed while we walk (the converter's temporary files)
                pass
    return total


class _TreeSampler:
    """Samples the summed RSS of this process and its descendants every 50 ms, and the size of
    `folder` every 0.5 s, while in its `with` block."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.peak_rss = 0
        self.peak_disk = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(0.05):
            self.peak_rss = max(
                self.peak_rss, sum(_rss(p) for p in [os.getpid(), *_descendants(os.getpid())])
            )
            tick += 1
            if tick % 10 == 0:
                self.peak_disk = max(self.peak_disk, _du(self.folder))


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                kids = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                out += [int(k) for k in kids]
                todo += [int(k) for k in kids]
        except OSError:
            continue
    return out


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# ---- results -------------------------------------------------------------------------------------
@dataclass
class Row:
    """Medians over the repetitions of one kind of measurement on one checkpoint."""

    format: str
    ranks: int
    files: int
    kind: str
    work_s: float
    rss_bytes: int
    state_bytes: int
    extra_disk: int
    peak_disk: int
    runs: list[float] = field(default_factory=list)

    @property
    def gbps(self) -> float:
        return self.state_bytes / self.work_s / 1e9 if self.work_s > 0 else float("nan")


@dataclass
class ShardsResult:
    params: int
    reps: int
    rows: list[Row]
    skipped: list[str] = field(default_factory=list)

    def row(self, fmt: str, ranks: int, kind: str) -> Row | None:
        for r in self.rows:
            if (r.format, r.ranks, r.kind) == (fmt, ranks, kind):
                return r
        return None

    def report(self) -> str:
        state = self.rows[0].state_bytes if self.rows else 0
        lines = [
            f"many shards: {self.params / 1e6:.1f}M params (fp32 m+v {state / 1e9:.2f} GB) at "
            f"every rank count, median of {self.reps} interleaved runs, each in a fresh process",
            f"{'format':<6} {'ranks':>5} {'files':>5} {'kind':<18} {'time (s)':>8} "
            f"{'GB/s m+v':>8} {'peak RSS':>9} {'extra disk':>10}  runs",
        ]
        for r in self.rows:
            disk = f"{r.extra_disk / 1e9:.2f} GB"
            if r.peak_disk > r.extra_disk:
                disk += f" (peak {r.peak_disk / 1e9:.2f})"
            runs = " ".join(f"{x:.2f}" for x in r.runs)
            lines.append(
                f"{r.format:<6} {r.ranks:>5} {r.files:>5} {r.kind:<18} {r.work_s:>8.2f} "
                f"{r.gbps:>8.2f} {r.rss_bytes / 2**30:>6.2f} GB {disk:>10}  [{runs}]"
            )
        for fmt in FORMATS:
            ranks = sorted({r.ranks for r in self.rows if r.format == fmt})
            if not ranks:
                continue
            a = [self.row(fmt, w, "analyze") for w in ranks]
            if a[0] and a[-1]:
                growth = a[-1].rss_bytes / a[0].rss_bytes - 1
                lines.append(
                    f"{fmt}: analyze peak RSS {ranks[0]} -> {ranks[-1]} ranks: "
                    f"{a[0].rss_bytes / 2**30:.2f} -> {a[-1].rss_bytes / 2**30:.2f} GB "
                    f"({growth:+.0%}); time {a[0].work_s:.2f} -> {a[-1].work_s:.2f} s"
                )
            conv = self.row(fmt, ranks[-1], CONVERTER[fmt])
            if conv and a[-1]:
                lines.append(
                    f"{fmt}: analyze / {CONVERTER[fmt]} at {ranks[-1]} ranks = "
                    f"{a[-1].work_s / conv.work_s:.3f} ({conv.work_s:.2f} s, "
                    f"{conv.rss_bytes / 2**30:.2f} GB, {conv.extra_disk / 1e9:.2f} GB written)"
                )
        lines += [f"skipped: {s}" for s in self.skipped]
        return "\n".join(lines)


def _median(fmt: str, ranks: int, files: int, kind: str, runs: list[dict[str, Any]]) -> Row:
    return Row(
        format=fmt,
        ranks=ranks,
        files=files,
        kind=kind,
        work_s=statistics.median(r["work_s"] for r in runs),
        rss_bytes=int(statistics.median(r["rss_bytes"] for r in runs)),
        state_bytes=runs[0]["state_bytes"],
        extra_disk=int(statistics.median(r["extra_disk"] for r in runs)),
        peak_disk=int(max(r.get("peak_disk", 0) for r in runs)),
        runs=[r["work_s"] for r in runs],
    )


def _env(deepspeed_path: Path | None) -> dict[str, str]:
    """The children's environment: this adamscope first on the path, deepspeed's folder after."""
    import adamscope

    root = str(Path(adamscope.__file__).resolve().parent.parent)
    parts = [root, *([str(deepspeed_path)] if deepspeed_path else [])]
    parts += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.environ | {"PYTHONPATH": os.pathsep.join(parts), "DS_ACCELERATOR": "cpu"}


def deepspeed_missing(env: dict[str, str]) -> str | None:
    """Why ds_to_universal cannot run in a child with `env` (None when it can)."""
    code = "import deepspeed.checkpoint.ds_to_universal"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode == 0:
        return None
    tail = (proc.stderr or "").strip().splitlines()[-1:] or ["?"]
    return f"ds_to_universal: deepspeed does not import ({tail[0][:120]}); install: {_DS_HINT}"


def _generated(workdir: Path, fmt: str, params: int, ranks: int, say: Any) -> Path:
    from adamscope.perf.shard_checkpoints import make_dcp, make_zero3

    path = workdir / f"{fmt}-{params}-w{ranks}"
    if not path.exists():
        say(f"generating {path} ({params / 1e6:.1f}M params over {ranks} ranks)")
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        make = make_zero3 if fmt == "zero3" else make_dcp
        make(tmp, params=params, world=ranks)
        tmp.replace(path)
    return path


def _files(path: Path) -> int:
    return sum(1 for p in path.rglob("*") if p.name.endswith((".distcp", "_optim_states.pt")))


def run_shards_bench(
    *,
    ranks: list[int],
    params: int = 64_000_000,
    reps: int = 3,
    workdir: Path | None = None,
    formats: tuple[str, ...] = FORMATS,
    converters: bool = True,
    deepspeed_path: Path | None = None,
    say: Any = None,
) -> ShardsResult:
    """Generate the many-shard checkpoints and measure read and analyze on each, and the
    frameworks' converters on the largest rank count, interleaved.

    Args:
        ranks: rank counts (files per checkpoint), e.g. [8, 16, 32, 64].
        params: parameters of every checkpoint (the same at every rank count).
        reps: repetitions of every measurement; medians are reported.
        workdir: where generated checkpoints go (kept for the next run); default a temp folder.
        formats: "zero3", "dcp" or both.
        converters: also time ds_to_universal / dcp_to_torch_save at the largest rank count.
        deepspeed_path: a folder to put on the converter's PYTHONPATH (a --target install).
    """
    say = say or (lambda s: log.info("%s", s))
    env = _env(deepspeed_path)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="adamscope-shards-")
        workdir = Path(tmp.name)
    result = ShardsResult(params=params, reps=reps, rows=[])
    try:
        for fmt in formats:
            for w in sorted(ranks):
                path = _generated(Path(workdir), fmt, params, w, say)
                kinds = ["read", "analyze"]
                if converters and w == max(ranks):
                    why = deepspeed_missing(env) if fmt == "zero3" else None
                    if why:
                        result.skipped.append(why)
                        say(f"skipped {why}")
                    else:
                        kinds.append(CONVERTER[fmt])
                _warm_folder(path)
                runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
                for rep in range(reps):
                    for k in kinds[rep % len(kinds) :] + kinds[: rep % len(kinds)]:
                        r = _measure(k, path, "cpu", module=__name__, env=env)
                        runs[k].append(r)
                        say(f"  {fmt} w{w} rep {rep + 1}/{reps} {k}: {r['work_s']:.2f} s")
                files = _files(path)
                result.rows += [_median(fmt, w, files, k, v) for k, v in runs.items()]
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()


def _warm_folder(path: Path) -> None:
    """Read every file once so every measurement starts from a warm page cache."""
    for p in sorted(path.rglob("*")):
        if p.is_file():
            _warm(p)


def parse_ranks(text: str) -> list[int]:
    """'8,16,32,64' -> [8, 16, 32, 64]."""
    from adamscope.config import OptionError

    try:
        out = [parse_count(x) for x in text.split(",") if x.strip()]
    except OptionError:
        out = []
    if not out or any(w < 1 for w in out):
        raise OptionError(f"--shards {text!r}: give rank counts like 8,16,32,64")
    return out
