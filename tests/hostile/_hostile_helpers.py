"""Helpers of the hostile-input tests: mutate real fixture files, run the CLI, hash trees, run a
block under a time and memory bound, make sparse files and FIFOs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import time
import tracemalloc
import zipfile
from collections.abc import Iterator
from pathlib import Path

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
LIGHTNING = sorted((FIXTURES / "lightning").glob("*.ckpt"))
TORCH_FILES = {
    "torch": FIXTURES / "torch" / "adam_names.pt",
    "nanogpt": FIXTURES / "nanogpt" / "compiled" / "ckpt.pt",
    "lightning": LIGHTNING[0],
    "hf_trainer": FIXTURES / "hf_trainer" / "gpt2" / "checkpoint-10" / "optimizer.pt",
}


def cli(*args: str) -> tuple[int, str]:
    """(exit code, stderr) of `adamscope ARGS` run in-process."""
    from adamscope.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a crash, not an error message: let the test show it
    return result.exit_code, result.stderr


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("adamscope: error:")]


def place(family: str, tmp: Path) -> tuple[Path, Path]:
    """A copy of the family's fixture under `tmp`: (path to analyse, the torch file inside it)."""
    src = TORCH_FILES[family]
    if family == "hf_trainer":
        folder = tmp / "checkpoint-10"
        shutil.copytree(src.parent, folder)
        return folder, folder / src.name
    dst = tmp / src.name
    shutil.copyfile(src, dst)
    return dst, dst


def rezip(src: Path, dst: Path, *, replace: dict[str, bytes | None]) -> Path:
    """Rewrite a torch zip file, replacing entries whose names end with a key (None: drop it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new
                    break
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


def zip_entry(path: Path, suffix: str) -> bytes:
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith(suffix))
        return zf.read(name)


def storages(path: Path) -> list[str]:
    """Names of the tensor storage entries of a torch zip file."""
    with zipfile.ZipFile(path) as zf:
        return [n for n in zf.namelist() if "/data/" in n]


def tree_hashes(root: Path) -> dict[str, tuple[str, int, int]]:
    """{relative path: (sha256, size, mtime_ns)} of every file under `root` (hidden ones too)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(root))] = (digest, st.st_size, st.st_mtime_ns)
    return out


class Overran(BaseException):
    """A bounded block ran past its time limit (BaseException: no `except Exception` eats it)."""


# The rule: no hostile input takes a process past 2 GB resident. A fresh `adamscope` with
# torch imported holds ~0.4 GB, so a block may add 1.5 GB to what the test process already holds.
RSS_GROWTH_MB = 1500


def _peak_rss_mb(reset: bool = False) -> float | None:
    """The process's peak resident set (VmHWM, native allocations included: torch, numpy, polars'
    Rust heap), after resetting it when `reset` (Linux: "5" > /proc/self/clear_refs); None where
    that is not possible."""
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration, ValueError):
        return None


@contextlib.contextmanager
def bounded(seconds: float, *, megabytes: float | None = None) -> Iterator[dict[str, float]]:
    """Runs the block under a wall-clock limit (SIGALRM; a blocked open() or read() is
    interrupted too) and checks how far the process's peak resident memory (VmHWM, reset at the
    start) rose during it against RSS_GROWTH_MB; with `megabytes`, also the peak Python heap it allocated
    (tracemalloc: bytes, JSON objects, pickle values; numpy buffers included). Yields a dict that
    holds `seconds`, `peak_rss_mb`, `rss_growth_mb` and `peak_mb` once the block is done; set
    ADAMSCOPE_HOSTILE_LOG=FILE to append them there as JSON lines (the numbers of
    docs/security.md)."""

    def alarm(*_: object) -> None:
        raise Overran(f"ran past {seconds} s")

    measured: dict[str, float] = {}
    start_rss = _peak_rss_mb(reset=True)  # after the reset: the resident set now
    rss = start_rss is not None
    old = signal.signal(signal.SIGALRM, alarm)
    if megabytes is not None:
        tracemalloc.start()
    t0 = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield measured
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        measured["seconds"] = time.perf_counter() - t0
        if rss:
            measured["peak_rss_mb"] = _peak_rss_mb() or 0.0
            measured["rss_growth_mb"] = measured["peak_rss_mb"] - (start_rss or 0.0)
        if megabytes is not None:
            measured["peak_mb"] = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.stop()
        _record(measured)
    if rss:
        grew = measured["rss_growth_mb"]
        assert grew < RSS_GROWTH_MB, f"resident memory grew by {grew:.0f} MB"
    if megabytes is not None:
        assert measured["peak_mb"] < megabytes, f"peak {measured['peak_mb']:.0f} MB"


def _record(measured: dict[str, float]) -> None:
    target = os.environ.get("ADAMSCOPE_HOSTILE_LOG")
    if target:
        case = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
        with open(target, "a") as f:
            f.write(json.dumps({"case": case, **measured}) + "\n")


def sparse(path: Path, size: int, *, head: bytes = b"") -> Path:
    """A file of `size` bytes that takes no disk space beyond `head` (a hole after it)."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def fifo(path: Path) -> Path:
    """A named pipe nobody writes to: opening it for reading would block forever."""
    os.mkfifo(path)
    return path
