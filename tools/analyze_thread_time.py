"""Thread time of analyze's big consumers: the fused kernel, Hartigan's dip, reading.

    python tools/analyze_thread_time.py CKPT [--device cpu]

Wraps `fused.fold`, `bimodality.dip` and the torch reader's `read_into`, runs `analyze` once
(imports and the numba cache load done first) and prints the wall time next to the summed thread
time of each (several threads: a sum can exceed the wall time). docs/performance.md quotes it.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import diptest  # noqa: F401 - what analyze imports lazily, outside the timing
    import polars  # noqa: F401
    import pyarrow  # noqa: F401
    import torch  # noqa: F401

    import adamscope.readers.torchzip as tz
    import adamscope.stats.bimodality as bm
    import adamscope.stats.fused as fused
    from adamscope.api import AnalyzeOptions, analyze
    from adamscope.config import StatsConfig

    fused.available()
    spent = {"kernel": 0.0, "dip": 0.0, "read": 0.0}
    lock = threading.Lock()

    def wrap(owner: object, name: str, key: str) -> None:
        orig = getattr(owner, name)

        def timed(*a: object, **k: object) -> object:
            t = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                with lock:
                    spent[key] += time.perf_counter() - t

        setattr(owner, name, timed)

    wrap(fused, "fold", "kernel")
    wrap(bm, "dip", "dip")
    wrap(tz._Archive, "read_into", "read")
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        opts = AnalyzeOptions(out=Path(d) / "o", stats=StatsConfig(device=args.device))
        analyze(args.checkpoint, options=opts)
        wall = time.perf_counter() - t
    parts = "  ".join(f"{k} {v:.2f} s" for k, v in spent.items())
    print(f"wall {wall:.2f} s  thread time: {parts}")


if __name__ == "__main__":
    main()
