"""Times unpickler.check_pickle (the numba kernel and the Python reference) and the whole
dcp.read_metadata (seconds, peak RSS) on a DCP folder's `.metadata`, e.g. one written by
`adamscope.perf.shard_checkpoints.make_dcp(folder, params=int(1e8), world=3072)` (55 MB).

    python tools/pickle_scan_bench.py FOLDER {kernel,reference,read}

One mode per process, so that each peak RSS is its own.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path


def main() -> None:
    folder, mode = Path(sys.argv[1]), sys.argv[2]
    from adamscope.readers import unpickler

    data = (folder / ".metadata").read_bytes()
    mb = len(data) / 1e6
    if mode == "reference":
        t = time.perf_counter()
        unpickler.check_pickle_reference(data, source=folder)
        dt = time.perf_counter() - t
        print(f"reference check_pickle: {mb:.1f} MB in {dt:.2f} s = {mb / dt:.2f} MB/s")
    elif mode == "kernel":
        from adamscope.readers import _pickle_scan

        t = time.perf_counter()
        assert _pickle_scan.available()
        print(f"kernel load: {time.perf_counter() - t:.2f} s")
        for _ in range(3):
            t = time.perf_counter()
            unpickler.check_pickle(data, source=folder)
            dt = time.perf_counter() - t
            print(f"kernel check_pickle: {mb:.1f} MB in {dt:.2f} s = {mb / dt:.1f} MB/s")
    else:
        from adamscope.readers.dcp import read_metadata

        del data
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        entries = read_metadata(folder)
        dt = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(
            f"read_metadata: {mb:.1f} MB, {len(entries)} entries, {dt:.2f} s, peak RSS "
            f"{peak / 1024:.0f} MiB (before it {before / 1024:.0f} MiB)"
        )


if __name__ == "__main__":
    main()
