"""PyTorch Distributed Checkpoint folders (fixtures/make_dcp.py: FSDP2 on 2 gloo ranks, saved as
get_state_dict, torchtitan's flattened layout and HF Trainer's optimizer_0/).

References: fixtures/dcp/truth.json from the live optimizer's full state dict
(`get_optimizer_state_dict(full_state_dict=True)`, float64 statistics via fixtures/truth.py).
Folders written in the test use `dcp.save` in one process (no process group), with known values.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from _truth_helpers import FIXTURES, assert_matches, load_truth, stream, stream_rss

from adamscope.config import ReaderOptions
from adamscope.errors import NotAdamError, UnsafePickleError, UnsupportedFormatError
from adamscope.readers.dcp import DCPReader, read_metadata

FAMILY = FIXTURES / "dcp"
TRUTH = load_truth("dcp")
FSDP_LAYOUTS = ["fsdp2", "torchtitan", "hf_fsdp/checkpoint-5/optimizer_0"]
MODEL_ORDER = ["embed.weight", "embed.bias", "norm.weight", "norm.bias", "head.weight", "head.bias"]


@pytest.mark.parametrize("rel", FSDP_LAYOUTS)
def test_names_values_and_hyper_params_match_the_live_optimizer(rel: str) -> None:
    expected = TRUTH[rel]["tensors"]
    reader = DCPReader(FAMILY / rel, options=ReaderOptions())
    states = list(reader.iter_tensors())
    assert sorted(ts.name for ts in states) == sorted(expected) == sorted(MODEL_ORDER)
    if rel != "hf_fsdp/checkpoint-5/optimizer_0":  # model keys saved alongside give model order
        assert [ts.name for ts in states] == MODEL_ORDER
    for ts in states:
        assert_matches(ts, expected[ts.name], chunk=5)  # chunks straddle the FSDP shards
        assert ts.notes == []  # dim-0 shards: true flat offsets
    info = reader.describe()
    assert info.step == 5 and info.n_tensors == 6
    assert info.n_params == sum(t["numel"] for t in expected.values()) == 87


def test_dim1_shards_stream_every_element_once_with_a_note() -> None:
    """Tensor-parallel style Shard(1): chunks are column blocks, not flat ranges; the statistics
    (order-free) still match and the TensorState says the order follows the shards."""
    expected = TRUTH["shard_dim1"]["tensors"]["proj.weight"]
    (ts,) = DCPReader(FAMILY / "shard_dim1", options=ReaderOptions()).iter_tensors()
    assert ts.name == "proj.weight" and ts.shape == (4, 6) and ts.step == 3.0
    assert ts.notes and "dim other than 0" in ts.notes[0]
    assert_matches(ts, expected, chunk=5)
    full = torch.randn(4, 6, generator=torch.Generator().manual_seed(7)) * 1e-2  # make_dcp.py
    m, _, _ = stream(ts, 5)
    by_shard = torch.cat([full[:, :3].reshape(-1), full[:, 3:].reshape(-1)])
    np.testing.assert_array_equal(m.ravel(), by_shard.double().numpy())


def test_probe_accepts_the_hf_checkpoint_folder_and_refuses_others() -> None:
    assert DCPReader.probe(FAMILY / "hf_fsdp" / "checkpoint-5")
    assert all(DCPReader.probe(FAMILY / rel) for rel in TRUTH)
    assert not DCPReader.probe(FIXTURES / "deepspeed" / "zero2_w2_fp32")
    assert not DCPReader.probe(FAMILY / "truth.json")


def test_metadata_sees_uneven_fsdp_shards() -> None:
    entries = read_metadata(FAMILY / "fsdp2")
    head = entries["optim.state.head.weight.exp_avg"]
    assert head.size == (3, 7) and [c.sizes for c in head.chunks] == [(2, 7), (1, 7)]
    assert {c.file.name for c in head.chunks} == {"__0_0.distcp", "__1_0.distcp"}


def test_metadata_pickle_is_never_executed(tmp_path: Path) -> None:
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "__0_0.distcp").write_bytes(b"")
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # noqa: ANN204
            return (Path.touch, (marker,))

    (folder / ".metadata").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(UnsafePickleError, match="pathlib"):
        DCPReader(folder, options=ReaderOptions())
    assert not marker.exists()


pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


def _save(folder: Path, state_dict: dict) -> Path:
    import torch.distributed.checkpoint as dcp

    dcp.save(state_dict, checkpoint_id=str(folder))  # one process: no process group needed
    return folder


def test_single_process_save_with_plain_tensors(tmp_path: Path) -> None:
    m, v = torch.linspace(-1, 1, 24).reshape(4, 6), torch.linspace(0, 2, 24).reshape(4, 6)
    groups = [{"lr": 0.5, "betas": (0.8, 0.9), "eps": 1e-6, "weight_decay": 0.0, "params": ["w"]}]
    state = {"w": {"step": torch.tensor(3.0), "exp_avg": m, "exp_avg_sq": v}}
    model = {"encoder.state.proj.weight": torch.ones(2)}  # a model key that looks like state
    sd = {"model": model, "optim": {"state": state, "param_groups": groups}}
    folder = _save(tmp_path / "ck", sd)
    (ts,) = DCPReader(folder, options=ReaderOptions()).iter_tensors()
    assert (ts.name, ts.shape, ts.step, ts.hp.lr, ts.hp.beta1) == ("w", (4, 6), 3.0, 0.5, 0.8)
    got_m, got_v, _ = stream(ts, 5)
    np.testing.assert_array_equal(got_m, m.numpy())
    np.testing.assert_array_equal(got_v, v.numpy())


def test_model_only_and_not_adam_are_reported(tmp_path: Path) -> None:
    folder = _save(tmp_path / "model", {"model": {"w": torch.ones(3)}})
    with pytest.raises(UnsupportedFormatError, match="without optimizer state"):
        DCPReader(folder, options=ReaderOptions())
    sgd = {"state": {"w": {"momentum_buffer": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]}
    folder = _save(tmp_path / "sgd", {"optim": sgd})
    with pytest.raises(NotAdamError, match="momentum_buffer"):
        DCPReader(folder, options=ReaderOptions())


_WRITE = """
import sys, torch
import torch.distributed.checkpoint as dcp
n = 4_000_000  # 16 MB of float32 each for exp_avg and exp_avg_sq, one blob each
state = {"w": {"step": torch.tensor(1.0), "exp_avg": torch.ones(n), "exp_avg_sq": torch.ones(n)}}
groups = [{"lr": 0.1, "betas": (0.9, 0.95), "eps": 1e-8, "params": ["w"]}]
dcp.save({"optim": {"state": state, "param_groups": groups}}, checkpoint_id=sys.argv[1])
"""


def test_streaming_a_large_shard_keeps_memory_bounded(tmp_path: Path) -> None:
    folder = tmp_path / "big"
    subprocess.run([sys.executable, "-c", textwrap.dedent(_WRITE), str(folder)], check=True)
    result = stream_rss(DCPReader, folder)
    assert result["n"] == 4_000_000
    assert result["m_total"] == 4_000_000 - (1 << 16)  # every chunk after the first was read
    assert result["growth_kb"] < 8 * 1024, result  # a few 256 KiB chunks, not the 16 MB blob
