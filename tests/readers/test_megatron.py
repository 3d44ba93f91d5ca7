"""Megatron-core checkpoints (fixtures/make_megatron.py: megatron-core 0.16.1 on CPU over gloo, a
2-layer GPT, TP 1 and TP 2 x DP 2, bf16 params with the DistributedOptimizer's fp32 state), saved
as torch_dist (dp_reshardable and fully_reshardable) and in the legacy torch format.

References: fixtures/megatron/truth.json, from each rank's live torch Adam at save time, DP ranges
and TP shards joined per parameter (float64 statistics via fixtures/truth.py; rel 1e-12). Megatron
saves its param groups without their members, so a weight decay the two groups disagree on
(0.01 and 0 for norms) is unknown to the reader: checked to be None, every other value exactly.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from _truth_helpers import FIXTURES, assert_matches, load_truth, stream_rss
from typer.testing import CliRunner

from adamscope.cli import app
from adamscope.config import ReaderOptions
from adamscope.errors import (
    CorruptCheckpointError,
    NamingError,
    UnsafePickleError,
    UnsupportedFormatError,
)
from adamscope.pipeline.discovery import discover
from adamscope.readers import registry
from adamscope.readers.megatron import MegatronDistReader
from adamscope.readers.megatron_legacy import MegatronLegacyReader

FAMILY = FIXTURES / "megatron"
TRUTH = load_truth("megatron")
N_PARAMS = 5200  # embedding 32x16, 2 x (2 norms 16, qkv 48x16, proj 16x16, fc1 32x16, fc2 16x32),
# final norm 16, output layer 32x16: no padding, no replicas counted twice


def _reader(rel: str, **options: object) -> MegatronDistReader | MegatronLegacyReader:
    reader = registry.detect(FAMILY / rel)
    assert reader is (MegatronLegacyReader if "/legacy/" in rel else MegatronDistReader)
    return reader(FAMILY / rel, options=ReaderOptions(**options))


@pytest.mark.parametrize("rel", list(TRUTH))
def test_names_numel_and_statistics_match_the_live_optimizer(rel: str) -> None:
    reader = _reader(rel)
    states = list(reader.iter_tensors())
    expected = TRUTH[rel]["tensors"]
    assert sorted(ts.name for ts in states) == sorted(expected)
    assert len(states) == len(expected) == 15
    for ts in states:
        assert ts.hp.weight_decay is None  # the groups' 0.01 and 0: members not saved
        assert_matches(ts, {**expected[ts.name], "weight_decay": None}, chunk=7)
    info = reader.describe()
    assert info.step == TRUTH[rel]["step"] and info.n_params == N_PARAMS


@pytest.mark.parametrize("tp", ["tp1", "tp2"])
def test_dp_reshardable_names_come_out_in_registration_order(tp: str) -> None:
    # names.txt: the live model's named_parameters() order under the checkpoint's names; the
    # reader gets it from the buffers alone (megatron-core fills them in reverse)
    want = (FAMILY / tp / "names.txt").read_text().split()
    names = [ts.name for ts in _reader(f"{tp}/dp_reshardable/iter_0000003").iter_tensors()]
    assert names == want
    layer = [n.removeprefix("decoder.layers.0.") for n in names if ".layers.0." in n]
    # megatron-core's TransformerLayer (Attention registers linear_proj before SelfAttention adds
    # linear_qkv), under the TE-style keys torch_dist saves
    assert layer == [
        "self_attention.linear_qkv.layer_norm_weight",
        "self_attention.linear_proj.weight",
        "self_attention.linear_qkv.weight",
        "mlp.linear_fc1.layer_norm_weight",
        "mlp.linear_fc1.weight",
        "mlp.linear_fc2.weight",
    ]


def test_dim1_tensor_parallel_shards_are_noted() -> None:
    states = {ts.name: ts for ts in _reader("tp2/dp_reshardable/iter_0000003").iter_tensors()}
    assert states["decoder.layers.1.mlp.linear_fc2.weight"].shape == (16, 32)
    assert any("split dim 1" in n for n in states["decoder.layers.1.mlp.linear_fc2.weight"].notes)
    assert not any("split dim" in n for n in states["decoder.layers.1.mlp.linear_fc1.weight"].notes)


def test_run_folders_are_discovered_in_iteration_order_and_inspect_prints_them() -> None:
    found = discover(FAMILY / "tp1/dp_reshardable")
    assert [f.path.name for f in found] == ["iter_0000002", "iter_0000003"]
    assert {f.reader for f in found} == {MegatronDistReader}
    assert [f.reader for f in discover(FAMILY / "tp2/legacy")] == [MegatronLegacyReader]
    for rel in ("tp1/dp_reshardable", "tp2/legacy"):
        result = CliRunner().invoke(app, ["inspect", str(FAMILY / rel)])
        assert result.exit_code == 0, result.output
        assert f"step 3, 15 tensors, {N_PARAMS:,} parameters" in result.output


def _names_file(tmp_path: Path, names: list[str]) -> Path:
    path = tmp_path / "names.txt"
    path.write_text("\n".join(names) + "\n")
    return path


def test_model_names_list_gives_the_order_and_a_wrong_order_is_refused(tmp_path: Path) -> None:
    rel = "tp2/dp_reshardable/iter_0000003"
    names = (FAMILY / "tp2/names.txt").read_text().split()
    given = _reader(rel, model=FAMILY / "tp2/names.txt")
    expected = TRUTH[rel]["tensors"]
    for ts in given.iter_tensors():
        assert_matches(ts, {**expected[ts.name], "weight_decay": None}, chunk=64)
    # two parameters of 512 elements swapped: the sizes still fill the bucket, but the master
    # weights at each slot are not the saved weights of the name it would get
    i, j = names.index("decoder.layers.0.mlp.linear_fc1.weight"), names.index("output_layer.weight")
    names[i], names[j] = names[j], names[i]
    swapped = _reader(rel, model=_names_file(tmp_path, names))
    with pytest.raises(NamingError, match="master weights .* registration order"):
        list(swapped.iter_tensors())
    bad = _reader(rel, model=_names_file(tmp_path, ["decoder.layers.0.input_layernorm.weight"]))
    with pytest.raises(NamingError, match="not parameters of"):
        list(bad.iter_tensors())


def test_only_torchs_planner_classes_are_allowed(tmp_path: Path) -> None:
    folder = tmp_path / "iter_0000003"
    shutil.copytree(FAMILY / "tp1/fully_reshardable/iter_0000003", folder)
    data = (folder / ".metadata").read_bytes()
    good = b"torch.distributed.checkpoint.planner"
    assert good in data  # the real file pickles the save plans
    (folder / ".metadata").write_bytes(data.replace(good, b"torch.distributed.checkpoint.plannex"))
    with pytest.raises(UnsafePickleError, match="plannex"):
        MegatronDistReader(folder, options=ReaderOptions())


_WRITE_LEGACY = """
import sys
from argparse import Namespace
from pathlib import Path
import torch
folder = Path(sys.argv[1]) / "mp_rank_00"
folder.mkdir(parents=True)
n = 4_000_000  # one 2000 x 2000 bf16 weight: its fp32 state is 16 MB per tensor
w = torch.linspace(-1, 1, n).to(torch.bfloat16).reshape(2000, 2000)
groups = [{"lr": 0.1, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.0, "step": 1}]
torch.save({"args": Namespace(tensor_model_parallel_size=1), "iteration": 1, "model":
            {"decoder.layers.0.mlp.linear_fc1.weight": w},
            "optimizer": {"optimizer": {"param_groups": groups}}}, folder / "model_optim_rng.pt")
world = {"param": w.float().reshape(-1), "exp_avg": torch.ones(n), "exp_avg_sq": torch.ones(n),
         "numel_unpadded": n}
torch.save({"buckets_coalesced": True, 0: {(torch.bfloat16, torch.float32): world}},
           folder / "distrib_optim.pt")
"""


def test_streaming_a_large_legacy_buffer_keeps_memory_bounded(tmp_path: Path) -> None:
    folder = tmp_path / "iter_0000001"
    subprocess.run([sys.executable, "-c", textwrap.dedent(_WRITE_LEGACY), str(folder)], check=True)
    result = stream_rss(MegatronLegacyReader, folder)
    assert result["n"] == 4_000_000
    assert result["m_total"] == 4_000_000 - (1 << 16)  # every chunk after the first was read
    assert result["growth_kb"] < 8 * 1024, result  # a few 256 KiB chunks, not the 16 MB tensors


def write_dp_reshardable(folder: Path, weights: dict, state: dict) -> None:
    """A one-bucket dp_reshardable torch_dist folder as Megatron's strategy writes it (DCP, its
    ShardedObjects as torch.save'd bytes entries), TP 1, bf16 weights in registration order and
    the bucket's fp32 `state` (param, exp_avg, exp_avg_sq)."""
    import io
    from argparse import Namespace

    import torch
    import torch.distributed.checkpoint as dcp

    class RawBytes(dcp.DefaultSavePlanner):  # as Megatron's planner: a BytesIO is written as is
        def resolve_data(self, write_item):  # noqa: ANN001, ANN202
            obj = self.lookup_object(write_item.index)
            return obj if isinstance(obj, io.BytesIO) else super().resolve_data(write_item)

    def pickled(obj: object) -> io.BytesIO:
        buf = io.BytesIO()
        torch.save(obj, buf)
        buf.seek(0)
        return buf

    n = len(state["param"])
    group = "optimizer.distributed.dp_group_idx_0."
    bucket = group + "gbuf_idx_0.dtype_(torch.bfloat16, torch.float32).bucket_idx_0."
    hp = [{"lr": 0.1, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.0, "step": 1.0}]
    objects = {
        "per_bucket_numel_unpadded/shard_0_1": [{(torch.bfloat16, torch.float32): [n]}],
        "optimizer/shard_0_1": [{"param_groups": hp}],
    }
    sd = {**weights, **{bucket + k: v for k, v in state.items()}}
    sd |= {group + k: pickled(v) for k, v in objects.items()}
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process"
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(sd, checkpoint_id=folder, planner=RawBytes())
    content = {"distrib_optim_sharding_type": "dp_reshardable"}
    common = {"args": Namespace(), "iteration": 1, "content_metadata": content}
    torch.save(common, folder / "common.pt")
    (folder / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')


def test_streaming_a_large_dp_reshardable_bucket_keeps_memory_bounded(tmp_path: Path) -> None:
    import torch

    n = 4_000_000  # one bf16 parameter: its fp32 bucket state is 16 MB per tensor
    w = torch.linspace(-1, 1, n).to(torch.bfloat16)
    folder = tmp_path / "iter_0000001"
    state = {"param": w.float(), "exp_avg": torch.ones(n), "exp_avg_sq": torch.ones(n)}
    write_dp_reshardable(folder, {"decoder.final_layernorm.weight": w}, state)
    del w, state
    result = stream_rss(MegatronDistReader, folder)
    assert result["n"] == 4_000_000
    assert result["m_total"] == 4_000_000 - (1 << 16)  # every chunk after the first was read
    assert result["growth_kb"] < 8 * 1024, result  # a few 256 KiB chunks, not the 16 MB bucket


def test_a_rank_folder_or_file_reads_the_whole_iteration() -> None:
    rank = FAMILY / "tp2/legacy/iter_0000003/mp_rank_01"
    for path in (rank, rank / "distrib_optim.pt"):
        assert registry.detect(path) is MegatronLegacyReader
        reader = MegatronLegacyReader(path, options=ReaderOptions())
        assert reader.folder == rank.parent and reader.tp == 2
        assert reader.describe().n_params == N_PARAMS


def test_layouts_adamscope_does_not_read_are_refused_in_one_line(tmp_path: Path) -> None:
    src = FAMILY / "tp2/legacy/iter_0000003"
    pp = tmp_path / "pp" / "iter_0000003"
    shutil.copytree(src / "mp_rank_00", pp / "mp_rank_00_000")
    with pytest.raises(UnsupportedFormatError, match="pipeline-parallel folders"):
        MegatronLegacyReader(pp, options=ReaderOptions())
    gap = tmp_path / "gap" / "iter_0000003"
    shutil.copytree(src / "mp_rank_01", gap / "mp_rank_01")
    with pytest.raises(CorruptCheckpointError, match="a rank's folder is missing"):
        MegatronLegacyReader(gap, options=ReaderOptions())
    plain = tmp_path / "plain" / "iter_0000003"
    shutil.copytree(src, plain)
    for rank in ("mp_rank_00", "mp_rank_01"):
        (plain / rank / "distrib_optim.pt").unlink()
    with pytest.raises(UnsupportedFormatError, match="without --use-distributed-optimizer"):
        MegatronLegacyReader(plain, options=ReaderOptions())
    folder = tmp_path / "iter_0000003"
    shutil.copytree(FAMILY / "tp1/fully_reshardable/iter_0000003", folder)
    (folder / "metadata.json").write_text('{"sharded_backend": "zarr"}')
    with pytest.raises(UnsupportedFormatError, match="sharded_backend 'zarr'"):
        MegatronDistReader(folder, options=ReaderOptions())


def test_parameters_the_files_cannot_tell_apart_are_refused_unless_named(tmp_path: Path) -> None:
    import torch

    # two norms still at 1.0 in bf16, registered a then b: the buffer holds b at 0, a at 64
    ones = torch.ones(16, dtype=torch.bfloat16)
    m = torch.cat([torch.full((64,), 1.0), torch.full((16,), 2.0)])
    folder = tmp_path / "iter_0000001"
    state = {"param": torch.ones(80), "exp_avg": m, "exp_avg_sq": m.clone()}
    write_dp_reshardable(folder, {"a.weight": ones, "b.weight": ones.clone()}, state)
    reader = MegatronDistReader(folder, options=ReaderOptions())
    with pytest.raises(NamingError, match="fit 2 parameters whose saved weights are identical"):
        list(reader.iter_tensors())
    named = MegatronDistReader(
        folder, options=ReaderOptions(model=_names_file(tmp_path, ["a.weight", "b.weight"]))
    )
    means = {ts.name: float(next(ts.chunks(16))[1].mean()) for ts in named.iter_tensors()}
    assert means == {"a.weight": 2.0, "b.weight": 1.0}


def test_a_buffer_no_saved_weight_explains_is_refused(tmp_path: Path) -> None:
    import torch

    # the master weights at 0 are not the saved weights of the one parameter (a frozen
    # parameter's slot, or another layout): refused, not read under its name
    folder = tmp_path / "iter_0000001"
    state = {
        "param": torch.full((16,), 3.0),
        "exp_avg": torch.ones(16),
        "exp_avg_sq": torch.ones(16),
    }
    write_dp_reshardable(folder, {"a.weight": torch.ones(16, dtype=torch.bfloat16)}, state)
    with pytest.raises(NamingError, match="no parameter's saved weights match .* element 0"):
        list(MegatronDistReader(folder, options=ReaderOptions()).iter_tensors())
