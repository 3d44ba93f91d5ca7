"""Two kernel modules side by side, and our dip against diptest's, in one process (interleaved).

    python tools/kernel_ab.py [--before /work/main/adamscope/stats/_fused_kernels.py] [--reps 30]

`fold` of this checkout's `_fused_kernels` and of another copy (the file given) on the same 4M
elements (v log-normal around 1e-8, r ~ N(0, 0.25), step 2000): checks that both give the same
histograms and scalars, then prints the fastest and the median ns per element of `reps`
interleaved runs. Then one dip of 65,536 points (ours and diptest's) and two dips of 10^6 points
run one after the other and on two threads: a dip that holds the GIL gains nothing from the second
thread. docs/performance.md quotes it.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import diptest
import numpy as np

from adamscope.stats import fused
from adamscope.stats.adam import coefficients
from adamscope.stats.sketch import LOG_HI, LOG_LO
from adamscope.vocab import HyperParams


def _load(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("kernels_before", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # numba's disk cache finds the module by name
    spec.loader.exec_module(mod)
    return mod


def _fold_ab(before: Any, reps: int) -> None:
    n = 1 << 22
    k = coefficients(HyperParams(beta1=0.9, beta2=0.95, eps=1e-8), 2000.0)
    rng = np.random.default_rng(0)
    v = (1e-8 * rng.lognormal(0, 1, n)).astype(np.float32)
    m = (0.25 * rng.standard_normal(n) * np.sqrt(v) * k.bc1 / np.sqrt(k.bc2)).astype(np.float32)
    n_log = (LOG_HI - LOG_LO) * 20
    below = float(np.float32(k.eps**2 * k.bc2))
    tq, tabq, sq = fused.log_tables(20)
    tv, tabv, sv = fused.log_tables(20, k.bc2, 2.0)
    coef = fused.coefficient_array(k, 512, below)
    flags = np.array([0, 0, 0, 512, sq, sv], np.int64)
    no = (fused._NO_POS, fused._NO_F32, fused._NO_F32, fused._NO_OK)

    def run(mod: Any) -> tuple[list[np.ndarray], np.ndarray]:
        hists = [np.zeros(s, np.int64) for s in (514, 514, n_log + 2, n_log + 2, n_log + 2)]
        out, counts = np.zeros(fused.N_SCALARS), np.zeros(2, np.int64)
        mod.fold(m, v, v, coef, flags, *hists, tq, tabq, tv, tabv, out, counts, *no)
        return hists, out

    mods = {"before": before, "this": fused._kernels()}
    (ha, oa), (hb, ob) = (run(x) for x in mods.values())
    assert all((a == b).all() for a, b in zip(ha, hb, strict=True)) and (oa == ob).all()
    times: dict[str, list[float]] = {name: [] for name in mods}
    for _ in range(reps):
        for name, mod in mods.items():
            t = time.perf_counter()
            run(mod)
            times[name].append((time.perf_counter() - t) / n * 1e9)
    for name, ts in times.items():
        print(
            f"fold {name:<7} fastest {min(ts):.2f}  median {statistics.median(ts):.2f} ns/element"
        )


def _dips() -> None:
    rng = np.random.default_rng(1)
    x = np.sort(rng.standard_normal(65_536))
    big = np.sort(rng.standard_normal(1_000_000))
    for name, fn in (("diptest", diptest.dipstat), ("ours", fused.dip_sorted)):
        fn(x)
        t = time.perf_counter()
        for _ in range(20):
            fn(x)
        one = (time.perf_counter() - t) / 20 * 1e3
        t = time.perf_counter()
        fn(big)
        fn(big)
        serial = time.perf_counter() - t
        threads = [threading.Thread(target=fn, args=(big,)) for _ in range(2)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        two = time.perf_counter() - t
        print(
            f"dip {name:<8} 65,536 points {one:.2f} ms;"
            f" two of 10^6: {serial:.2f} s in turn, {two:.2f} s on two threads"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--before", type=Path, default=Path("/work/main/adamscope/stats/_fused_kernels.py")
    )
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    fused.available()
    _fold_ab(_load(args.before), args.reps)
    _dips()


if __name__ == "__main__":
    main()
