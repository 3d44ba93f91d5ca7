"""A long read shows progress and can be interrupted: the progress hears of every chunk as it is
read, and Ctrl-C in the middle of a tensor's read (here a reader made slow, in a child process, as
a multi-TB checkpoint on slow storage is) ends analyze within seconds with exit 130, one line, the
output folder without a manifest and no temporary file left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from _hostile_helpers import FIXTURES

from adamscope.api import analyze

NANOGPT = FIXTURES / "nanogpt" / "compiled"

CHILD = """
import sys, time
from adamscope.readers import nanogpt
real = nanogpt.NanoGPTReader.iter_tensors

def slow(self):
    for ts in real(self):
        inner = ts.chunks
        def chunks(n, inner=inner):
            for item in inner(64):  # many small chunks, each a slow read
                print("reading", flush=True)
                time.sleep(0.2)
                yield item
        ts.chunks = chunks
        yield ts

nanogpt.NanoGPTReader.iter_tensors = slow
sys.argv = ["adamscope", "analyze", sys.argv[1], "-o", sys.argv[2], "-q"]
from adamscope.cli import main
main()
"""


class _Counting:
    def __init__(self) -> None:
        self.counted = 0
        self.tensors = 0

    def checkpoint(self, index: int, total: int, path: Path) -> None:
        pass

    def tensor(self, name: str, numel: int) -> None:
        self.tensors += numel

    def elements(self, n: int) -> None:
        self.counted += n


def test_progress_hears_every_chunk() -> None:
    p = _Counting()
    tables = analyze(NANOGPT, progress=p, chunk_elems=100)
    numel = int(tables.tensors["numel"].sum())
    assert p.counted == numel == p.tensors
    assert numel > 100 * len(tables.tensors)  # several chunks per tensor, not one per tensor


def test_ctrl_c_in_the_middle_of_a_read(tmp_path: Path) -> None:
    out = tmp_path / "out"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(NANOGPT), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert child.stdout is not None
        for _ in range(3):  # a few chunks into the first tensor
            assert child.stdout.readline().startswith("reading")
        t0 = time.perf_counter()
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
        waited = time.perf_counter() - t0
    finally:
        child.kill()
    assert child.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    assert waited < 10, waited
    assert not (out / "manifest.json").exists()
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")] if out.exists() else []
    assert not leftovers, leftovers
