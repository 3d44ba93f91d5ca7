"""DeepSpeed ZeRO 1/2/3 and universal checkpoints (fixtures/make_deepspeed.py, DeepSpeed 0.19.8 on
CPU, 1-2 ranks over gloo, fp32 and bf16).

References: fixtures/deepspeed/truth.json from the live optimizer at save time
(`safe_get_full_optimizer_state`, float64 statistics via fixtures/truth.py). Synthetic folders
written with torch.save (plain dicts, no DeepSpeed objects) cover world sizes the fixtures don't
(W = 3) with known values, the reader's no-`param_slice_mappings` path, and memory.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from _truth_helpers import FIXTURES, assert_matches, load_truth, stream, stream_rss

from adamscope.config import ReaderOptions
from adamscope.errors import CorruptCheckpointError, NotAdamError, UnsafePickleError
from adamscope.readers.deepspeed import DeepSpeedReader, DeepSpeedUniversalReader
from adamscope.readers.torchzip import load_lazy

FAMILY = FIXTURES / "deepspeed"
TRUTH = load_truth("deepspeed")
ZERO_RUNS = ["zero1_w1_fp32", "zero1_w2_bf16", "zero2_w2_fp32", "zero3_w2_fp32"]
UNIVERSAL_RUNS = ["universal_zero2", "universal_zero3"]
# param_shapes order: group 0 (weights, decayed), then group 1 (biases and norm)
ORDER = ["fc1.weight", "head.weight", "fc1.bias", "norm.weight", "norm.bias", "head.bias"]


@pytest.mark.parametrize("run", ZERO_RUNS + UNIVERSAL_RUNS)
def test_names_values_and_hyper_params_match_the_live_optimizer(run: str) -> None:
    cls = DeepSpeedUniversalReader if run.startswith("universal") else DeepSpeedReader
    expected = TRUTH[run]["tensors"]
    states = list(cls(FAMILY / run, options=ReaderOptions()).iter_tensors())
    assert [ts.name for ts in states] == ORDER
    assert sorted(ORDER) == sorted(expected)
    for ts in states:
        assert_matches(ts, expected[ts.name], chunk=4)  # chunks straddle rank boundaries
        assert ts.hp.decoupled_weight_decay and ts.hp.bias_correction


@pytest.mark.parametrize("run", ZERO_RUNS)
def test_padding_is_removed(run: str) -> None:
    """The flat partitions hold padding (63 elements padded per group / per parameter)."""
    folder = FAMILY / run / (FAMILY / run / "latest").read_text().strip()
    stored = 0
    for f in sorted(folder.glob("*optim_states.pt")):
        outer = load_lazy(f)["optimizer_state_dict"]
        inner = outer.get("base_optimizer_state") or outer["optimizer_state_dict"]
        stored += sum(s["exp_avg"].numel for s in inner["state"].values())
    info = DeepSpeedReader(FAMILY / run, options=ReaderOptions()).describe()
    assert info.n_params == 63 == sum(t["numel"] for t in TRUTH[run]["tensors"].values())
    assert stored > 63  # so the reader really had to drop padding
    assert info.step == 5 and info.n_tensors == 6
    world = 1 if "w1" in run else 2
    assert f"data-parallel world size {world}" in info.notes[0]


def test_probe_tells_the_layouts_apart() -> None:
    for run in ZERO_RUNS:
        assert DeepSpeedReader.probe(FAMILY / run)
        assert DeepSpeedReader.probe(FAMILY / run / "global_step5")  # the tag folder itself
        assert not DeepSpeedUniversalReader.probe(FAMILY / run)
    for run in UNIVERSAL_RUNS:
        assert DeepSpeedUniversalReader.probe(FAMILY / run)
        assert not DeepSpeedReader.probe(FAMILY / run)
    assert not DeepSpeedReader.probe(FIXTURES / "dcp" / "fsdp2")
    assert not DeepSpeedReader.probe(FAMILY / "truth.json")


@pytest.mark.parametrize("chunk", [1, 1 << 20])
def test_chunk_size_does_not_change_the_data(chunk: int) -> None:
    a = list(DeepSpeedReader(FAMILY / "zero3_w2_fp32", options=ReaderOptions()).iter_tensors())
    b = list(DeepSpeedReader(FAMILY / "zero2_w2_fp32", options=ReaderOptions()).iter_tensors())
    for x, y in zip(a, b, strict=True):  # same seeds and math: stage 3 and 2 hold equal state
        np.testing.assert_array_equal(stream(x, chunk)[0], stream(y, 3)[0])


# --- synthetic folders (torch.save of plain dicts) -------------------------------------------
SHAPES = {"a.weight": (5, 3), "a.bias": (5,), "b.weight": (2, 7), "c": (1,)}


def _full(name: str, which: str) -> torch.Tensor:
    n = math.prod(SHAPES[name])
    base = 1000.0 * list(SHAPES).index(name) + (0.5 if which == "exp_avg_sq" else 0.0)
    return torch.arange(n, dtype=torch.float32) + base


def _write_folder(root: Path, *, stage: int, world: int, extra: dict | None = None) -> Path:
    tag = root / "global_step7"
    tag.mkdir(parents=True)
    (root / "latest").write_text("global_step7")
    model = {
        "param_shapes": [{k: torch.Size(v) for k, v in SHAPES.items()}],
        "dp_world_size": world,
        "global_steps": 7,
        "ds_config": {"zero_optimization": {"stage": stage}},
    }
    prefix = "zero_pp_rank_0_" if stage == 3 else ""
    torch.save(model, tag / f"{prefix}mp_rank_00_model_states.pt")
    group = {"lr": 0.1, "betas": (0.8, 0.9), "eps": 1e-6, "weight_decay": 0.0, "params": [0]}
    for rank in range(world):
        part = {}
        for which in ("exp_avg", "exp_avg_sq"):
            if stage == 3:  # each parameter padded to a multiple of W; rank r holds slice r
                pieces = []
                for name in SHAPES:
                    full = _full(name, which)
                    per = -(-full.numel() // world)
                    padded = torch.cat([full, torch.zeros(per * world - full.numel())])
                    pieces.append(padded[rank * per : (rank + 1) * per])
                part[which] = torch.cat(pieces)
            else:  # one flat buffer, padded to 2W, equal partitions in rank order
                flat = torch.cat([_full(n, which) for n in SHAPES])
                size = -(-flat.numel() // (2 * world)) * 2
                flat = torch.cat([flat, torch.zeros(size * world - flat.numel())])
                part[which] = flat[rank * size : (rank + 1) * size].clone()
        inner = {"state": {0: {"step": torch.tensor(7.0), **part}}, "param_groups": [group]}
        key = "optimizer_state_dict" if stage == 3 else "base_optimizer_state"
        outer = {"zero_stage": stage, key: inner, **(extra or {})}
        torch.save(
            {"optimizer_state_dict": outer}, tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
        )
    return root


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("world", [1, 3, 4])
def test_any_world_size_reassembles_exactly(tmp_path: Path, stage: int, world: int) -> None:
    root = _write_folder(tmp_path / "ckpt", stage=stage, world=world)
    states = list(DeepSpeedReader(root, options=ReaderOptions()).iter_tensors())
    assert [ts.name for ts in states] == list(SHAPES)
    for ts in states:
        assert ts.shape == SHAPES[ts.name] and ts.step == 7.0
        assert (ts.hp.beta1, ts.hp.beta2, ts.hp.eps, ts.hp.lr) == (0.8, 0.9, 1e-6, 0.1)
        m, v, _ = stream(ts, 2)
        np.testing.assert_array_equal(m.ravel(), _full(ts.name, "exp_avg").numpy())
        np.testing.assert_array_equal(v.ravel(), _full(ts.name, "exp_avg_sq").numpy())


def test_missing_rank_and_wrong_world_size_are_reported(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "ckpt", stage=2, world=3)
    (root / "global_step7" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(CorruptCheckpointError, match=r"ranks \[1\] are missing"):
        DeepSpeedReader(root, options=ReaderOptions())
    root = _write_folder(tmp_path / "ckpt2", stage=2, world=3)
    (root / "global_step7" / "zero_pp_rank_2_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(CorruptCheckpointError, match="dp_world_size is 3 but 2"):
        DeepSpeedReader(root, options=ReaderOptions())


def test_not_adam_is_reported(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "ckpt", stage=2, world=1)
    shard = root / "global_step7" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    sd = torch.load(shard, weights_only=True)
    state = sd["optimizer_state_dict"]["base_optimizer_state"]["state"][0]
    state["momentum_buffer"] = state.pop("exp_avg")
    del state["exp_avg_sq"]
    torch.save(sd, shard)
    with pytest.raises(NotAdamError, match="SGD"):
        list(DeepSpeedReader(root, options=ReaderOptions()).iter_tensors())


class Payload:  # pickled by reference: loading it would import this test module
    pass


def test_unknown_pickle_globals_are_refused(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "ckpt", stage=2, world=1, extra={"evil": Payload()})
    reader = DeepSpeedReader(root, options=ReaderOptions())  # model states are clean
    with pytest.raises(UnsafePickleError, match="Payload"):
        list(reader.iter_tensors())


_WRITE = """
import sys, torch
from pathlib import Path
root = Path(sys.argv[1]); tag = root / "global_step1"; tag.mkdir(parents=True)
(root / "latest").write_text("global_step1")
numel, world = 4_000_001, 2  # 16 MB of fp32 exp_avg per rank shard
torch.save({"param_shapes": [{"w": torch.Size([numel])}], "dp_world_size": world,
            "ds_config": {"zero_optimization": {"stage": 2}}}, tag / "mp_rank_00_model_states.pt")
size = -(-numel // (2 * world)) * 2
flat = torch.cat([torch.ones(numel), torch.zeros(size * world - numel)])
group = {"lr": 0.1, "betas": (0.9, 0.95), "eps": 1e-8, "params": [0]}
for r in range(world):
    part = flat[r * size:(r + 1) * size].clone()
    inner = {"state": {0: {"step": 1, "exp_avg": part, "exp_avg_sq": part.clone()}},
             "param_groups": [group]}
    torch.save({"optimizer_state_dict": {"zero_stage": 2, "base_optimizer_state": inner}},
               tag / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
"""


def test_streaming_a_large_shard_keeps_memory_bounded(tmp_path: Path) -> None:
    root = tmp_path / "big"
    subprocess.run([sys.executable, "-c", textwrap.dedent(_WRITE), str(root)], check=True)
    result = stream_rss(DeepSpeedReader, root)
    assert result["n"] == result["numel"] == 4_000_001
    assert result["m_total"] == 4_000_001 - (1 << 16)  # ones everywhere after the first chunk
    assert result["growth_kb"] < 8 * 1024, result  # a few 256 KiB chunks, not 16 MB shards
