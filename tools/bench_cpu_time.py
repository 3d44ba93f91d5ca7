"""CPU time (all threads, user + system) next to wall time of bench's floor, baseline and analyze.

    python tools/bench_cpu_time.py CKPT [--reps 3] [--skip baseline]

`adamscope bench` reports wall time, which on a shared machine moves with the other jobs (a
floor of 0.5 s measured 3-4.5 s while four other sessions ran tests). The CPU time a measurement
spends moves much less, so comparing it says what a change saved. Each measurement runs the
bench's own function (`adamscope.perf.bench`) in a fresh interpreter, interleaved, the work alone
timed (imports and the numba cache load done first, as bench does); medians are printed.
docs/performance.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = """
import json, sys, time
from pathlib import Path
from adamscope.perf import bench
kind, ckpt = sys.argv[1], Path(sys.argv[2])
fn = {"floor": bench._floor, "baseline": bench._baseline, "analyze": bench._analyze}[kind]
ctx = fn(ckpt, "cpu", prepare=True)
w0, c0 = time.perf_counter(), time.process_time()
fn(ckpt, "cpu", prepare=False, ctx=ctx)
print(json.dumps({"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip", action="append", default=[])
    args = ap.parse_args()
    kinds = [k for k in ("floor", "baseline", "analyze") if k not in args.skip]
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for rep in range(args.reps):
        for kind in kinds[rep % len(kinds) :] + kinds[: rep % len(kinds)]:
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, kind, str(args.checkpoint)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            runs[kind].append(json.loads(out.strip().splitlines()[-1]))
    print(f"{'':10} {'wall (s)':>9} {'cpu (s)':>9}   runs (wall/cpu)")
    for kind, rs in runs.items():
        wall = statistics.median(r["wall"] for r in rs)
        cpu = statistics.median(r["cpu"] for r in rs)
        each = " ".join(f"{r['wall']:.2f}/{r['cpu']:.2f}" for r in rs)
        print(f"{kind:10} {wall:9.2f} {cpu:9.2f}   {each}")


if __name__ == "__main__":
    main()
