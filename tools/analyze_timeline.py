"""Where analyze's wall time goes, thread by thread: a sampling profile of every Python thread.

    python tools/analyze_timeline.py CKPT [--interval 0.002] [--top 8]

Runs `analyze` once (imports and the numba cache load done first) while a thread samples every
other thread's stack each `interval` seconds, and prints per thread the share of samples whose
innermost adamscope (else any) frame is each function. A thread in compiled code (numba, torch,
preadv) shows the Python function that called it. docs/performance.md quotes it.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import threading
import time
from pathlib import Path


def _where(frame: object) -> str:
    f = frame
    while f is not None:
        name = f.f_code.co_filename  # type: ignore[attr-defined]
        if "adamscope" in name:
            short = name.split("adamscope/", 1)[-1]
            return f"{short}:{f.f_code.co_name}"  # type: ignore[attr-defined]
        f = f.f_back  # type: ignore[attr-defined]
    return f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_code.co_name}"  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--interval", type=float, default=0.002)
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()

    import diptest  # noqa: F401 - what analyze imports lazily, outside the timing
    import polars  # noqa: F401
    import pyarrow  # noqa: F401
    import torch  # noqa: F401

    import adamscope.stats.fused as fused
    from adamscope.api import AnalyzeOptions, analyze
    from adamscope.config import StatsConfig

    fused.available()
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    stop = threading.Event()
    rounds = [0]

    def sample() -> None:
        while not stop.is_set():
            rounds[0] += 1
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident != sampler.ident:
                    counts[names.get(ident, "?").rsplit("_", 1)[0]][_where(frame)] += 1
            time.sleep(args.interval)

    sampler = threading.Thread(target=sample, daemon=True)
    with tempfile.TemporaryDirectory() as d:
        opts = AnalyzeOptions(out=Path(d) / "o", stats=StatsConfig(device="cpu"))
        sampler.start()
        t = time.perf_counter()
        analyze(args.checkpoint, options=opts)
        wall = time.perf_counter() - t
        stop.set()
        sampler.join()
    main_samples = rounds[0] or 1
    print(f"wall {wall:.2f} s, {main_samples} samples")
    for thread, c in sorted(counts.items()):
        total = sum(c.values())
        print(f"{thread}: alive {total / main_samples:.0%} of the wall")
        for where, k in c.most_common(args.top):
            print(f"  {k / main_samples:6.1%}  {where}")


if __name__ == "__main__":
    main()
