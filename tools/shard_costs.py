"""The per-file and per-piece costs docs/scale.md builds on, measured on bench --shards checkpoints.

    python tools/shard_costs.py /tmp/asshards   # the --workdir of `adamscope bench --shards 8,64`

Prints, for the ZeRO-3 and DCP checkpoints of the fewest and most ranks found there: the time to
open the checkpoint and lay out its pieces (per fragment / per metadata entry), the time to read
every byte (one thread, sums skipped), and from the two rank counts the cost of one more piece;
then the size of one tensor's sketch (what a torchrun rank sends to rank 0) and the time to load it.
"""

from __future__ import annotations

import pickle
import re
import sys
import time
from pathlib import Path


def _open_and_read(path: Path) -> tuple[float, float, int, int]:
    """(open + layout s, read s, pieces, state bytes) of one checkpoint, one pass."""
    from adamscope.readers.registry import open_checkpoint

    t0 = time.perf_counter()
    reader = open_checkpoint(path)
    states = list(reader.iter_tensors())
    t1 = time.perf_counter()
    nbytes = 0
    for ts in states:
        for _, m, v, _ in ts.chunks(1 << 22):
            nbytes += (m.numel() + v.numel()) * 4
    t2 = time.perf_counter()
    world = len(list(path.rglob("*.distcp"))) or len(list(path.rglob("*_optim_states.pt")))
    return t1 - t0, t2 - t1, len(states) * world, nbytes


def _sketch() -> None:
    import torch

    from adamscope.config import StatsConfig
    from adamscope.stats.engine import summarize, tensor_state_from_tensors
    from adamscope.stats.sketch import TensorSketch
    from adamscope.vocab import HyperParams

    hp = HyperParams(beta1=0.9, beta2=0.95, eps=1e-8, lr=6e-4, weight_decay=0.1)
    for n in (768, 65_536, 4_000_000):
        m, v = torch.randn(n) * 1e-4, torch.rand(n) * 1e-8 + 1e-10
        sk = summarize(tensor_state_from_tensors("t", m, v, step=2000, hp=hp), StatsConfig())
        blob = pickle.dumps(sk.to_state(), protocol=pickle.HIGHEST_PROTOCOL)
        t = time.perf_counter()
        for _ in range(20):
            TensorSketch.from_state(pickle.loads(blob))
        ms = (time.perf_counter() - t) / 20 * 1e3
        print(
            f"sketch of a {n}-element tensor: {len(blob)} bytes, unpickled + loaded in {ms:.2f} ms"
        )


def main() -> None:
    import torch

    torch.set_num_threads(1)
    workdir = Path(sys.argv[1])
    for fmt in ("zero3", "dcp"):
        found = sorted(
            (int(m.group(1)), p)
            for p in workdir.iterdir()
            if (m := re.match(rf"{fmt}-\d+-w(\d+)$", p.name))
        )
        if len(found) < 2:
            continue
        rows = []
        for w, path in (found[0], found[-1]):
            layout, read, pieces, nbytes = _open_and_read(path)
            rows.append((w, layout, read, pieces))
            extra = ""
            if fmt == "dcp":
                md = path / ".metadata"
                extra = f", .metadata {md.stat().st_size / 1e6:.1f} MB"
            print(
                f"{fmt} {w} ranks: open + layout {layout:.2f} s ({layout / pieces * 1e6:.0f} us per "
                f"piece), read {read:.2f} s ({nbytes / read / 1e9:.2f} GB/s), {pieces} pieces{extra}"
            )
        (w0, l0, r0, p0), (w1, l1, r1, p1) = rows
        print(
            f"{fmt} {w0} -> {w1} ranks: one more piece costs {(l1 - l0) / (p1 - p0) * 1e6:.0f} us "
            f"to open/lay out and {(r1 - r0) / (p1 - p0) * 1e6:.0f} us to read"
        )
    _sketch()


if __name__ == "__main__":
    main()
