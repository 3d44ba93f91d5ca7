"""Peak RSS while analysing a DeepSpeed ZeRO-2 folder with large shards (issue 3's memory check).

Writes a ZeRO-2 layout (the same files DeepSpeed 0.19 writes: mp_rank_00_model_states.pt with
param_shapes, one zero_pp_rank_R_mp_rank_00_optim_states.pt per data-parallel rank holding a flat
fp32 exp_avg / exp_avg_sq partition) of N parameters over W ranks, then runs `adamscope analyze` on
it in a child process and prints the child's peak RSS next to the size of one shard and the RSS of
`torch.load` of one shard (what a script that re-assembles the state would need at least).

    python tools/zero_shard_rss.py /tmp/zero_big --params 100_000_000 --world 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def write(root: Path, params: int, world: int, n_tensors: int = 25) -> None:
    import torch

    tag = root / "global_step10"
    tag.mkdir(parents=True, exist_ok=True)
    (root / "latest").write_text("global_step10")
    per = params // n_tensors
    shapes = {
        f"model.layers.{i}.mlp.weight": torch.Size([per // 1000, 1000]) for i in range(n_tensors)
    }
    numel = sum(s.numel() for s in shapes.values())
    torch.save(
        {
            "param_shapes": [shapes],
            "dp_world_size": world,
            "global_steps": 10,
            "ds_config": {"zero_optimization": {"stage": 2}},
        },
        tag / "mp_rank_00_model_states.pt",
    )
    size = -(-numel // (2 * world)) * 2
    gen = torch.Generator().manual_seed(0)
    group = {"lr": 1e-3, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1, "params": [0]}
    for rank in range(world):
        n = min(size, max(0, numel - rank * size))
        m = torch.zeros(size)
        v = torch.zeros(size)
        m[:n] = torch.randn(n, generator=gen) * 1e-3
        v[:n] = torch.rand(n, generator=gen) * 1e-6
        inner = {
            "state": {0: {"step": torch.tensor(10.0), "exp_avg": m, "exp_avg_sq": v}},
            "param_groups": [group],
        }
        torch.save(
            {"optimizer_state_dict": {"zero_stage": 2, "base_optimizer_state": inner}},
            tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt",
        )
        del m, v


_PEAK = """
import resource, runpy, sys
sys.argv = sys.argv[1:]
try:
    if sys.argv[0] == "-c":
        exec(sys.argv[1])
    else:  # -m MODULE ARGS...
        sys.argv = sys.argv[1:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit as e:
    if e.code not in (0, None):
        raise
finally:
    sys.stderr.write(f"\\nPEAK_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n")
"""


def child_peak_mb(args: list[str]) -> float:
    """Peak RSS of a fresh interpreter running `args` (measured by the child itself, so the
    parent's memory, visible to the child between fork and exec, does not count)."""
    proc = subprocess.run([sys.executable, "-c", _PEAK, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-2000:])
    kb = int(proc.stderr.rsplit("PEAK_KB", 1)[1].split()[0])
    return kb / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("--params", type=int, default=100_000_000)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=1 << 22)
    ap.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.write_only:
        write(a.root, a.params, a.world)
        return
    if not (a.root / "latest").exists():
        # in a child: the parent must stay small, since a child's peak RSS counts the parent's
        # pages between fork and exec
        subprocess.run(
            [
                sys.executable,
                __file__,
                str(a.root),
                "--params",
                str(a.params),
                "--world",
                str(a.world),
                "--write-only",
            ],
            check=True,
        )
    shard = a.root / "global_step10" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    print(f"shard size: {shard.stat().st_size / 1e6:.0f} MB x {a.world} ranks")
    import_only = child_peak_mb(
        ["-c", "import adamscope.api, adamscope.stats.engine, torch, polars"]
    )
    print(f"peak RSS, python + imports only: {import_only:.0f} MB", flush=True)
    analyzed = child_peak_mb(
        [
            "-m",
            "adamscope",
            "analyze",
            str(a.root),
            "-q",
            "--chunk",
            str(a.chunk),
            "-o",
            str(a.root.parent / "zero_rss_out"),
        ]
    )
    print(f"peak RSS, adamscope analyze (chunk {a.chunk} elements): {analyzed:.0f} MB")
    loaded = child_peak_mb(["-c", f"import torch; torch.load({str(shard)!r}, weights_only=False)"])
    print(f"peak RSS, torch.load of one shard: {loaded:.0f} MB")


if __name__ == "__main__":
    main()
