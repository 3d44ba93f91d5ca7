"""DCP serialized as safetensors (fixtures/make_dcp_safetensors.py: FSDP2 on 2 gloo ranks, saved
with `FileSystemWriter(serialization_format=SAFETENSORS)` and torch's `HuggingFaceStorageWriter`,
per-rank and consolidated).

References: fixtures/dcp_safetensors/truth.json from the live optimizer's full state dict at each
save (`get_state_dict(full_state_dict=True)`, float64 statistics via fixtures/truth.py); every
statistic must agree to float64 rounding (rel 1e-12). HuggingFaceStorageWriter stores no betas/eps:
they are passed as options, the values the run used (0.9, 0.95, 1e-8).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _truth_helpers import FIXTURES, assert_matches, load_truth, stream_rss
from typer.testing import CliRunner

from adamscope.cli import app
from adamscope.config import ReaderOptions
from adamscope.errors import AdamscopeError, CorruptCheckpointError, UnsafePickleError
from adamscope.pipeline.discovery import discover
from adamscope.readers import registry
from adamscope.readers.dcp import DCPReader
from adamscope.readers.dcp_safetensors import HFStorageReader

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")

FAMILY = FIXTURES / "dcp_safetensors"
TRUTH = load_truth("dcp_safetensors")
MODEL_ORDER = ["embed.weight", "embed.bias", "norm.weight", "norm.bias", "head.weight", "head.bias"]
RUN_HP = {"beta1": 0.9, "beta2": 0.95, "eps": 1e-8}  # make_dcp_safetensors.py
HP = ReaderOptions(**RUN_HP)
READER = {
    "fs_safetensors": DCPReader,
    "hf_run/step_3": HFStorageReader,
    "hf_run/step_5": HFStorageReader,
    "hf_consolidated": HFStorageReader,
}


@pytest.mark.parametrize("rel", list(READER))
def test_names_numel_and_statistics_match_the_live_optimizer(rel: str) -> None:
    assert registry.detect(FAMILY / rel) is READER[rel]
    reader = READER[rel](FAMILY / rel, options=HP)
    states = list(reader.iter_tensors())
    expected = TRUTH[rel]["tensors"]
    assert sorted(expected) == sorted(MODEL_ORDER)
    if rel.startswith("hf_run"):  # safetensors.save sorts each rank file's keys by name
        assert [ts.name for ts in states] == sorted(MODEL_ORDER)
        notes = ["order: the per-rank files' (alphabetical) key order, not the model's"]
    else:  # consolidated files and .metadata keep the state dict's order: model order
        assert [ts.name for ts in states] == MODEL_ORDER
        notes = []
    for ts in states:
        assert_matches(ts, expected[ts.name], chunk=5)  # chunks straddle the FSDP shards
        assert ts.notes == notes  # dim-0 shards: true flat offsets
    info = reader.describe()
    assert info.step == TRUTH[rel]["step"] and info.n_tensors == 6
    assert info.n_params == sum(t["numel"] for t in expected.values()) == 87


def test_file_system_writer_keeps_its_stored_hyper_parameters() -> None:
    """FileSystemWriter(SAFETENSORS) pickles param_groups as torch.save blobs before the
    safetensors data: lr, weight decay and betas come from the file, not from options."""
    states = list(DCPReader(FAMILY / "fs_safetensors", options=ReaderOptions()).iter_tensors())
    by_name = {ts.name: ts for ts in states}
    assert by_name["embed.weight"].hp.weight_decay == 0.1 and by_name["embed.bias"].hp.lr == 0.01
    assert {(ts.hp.beta1, ts.hp.beta2, ts.hp.eps) for ts in states} == {(0.9, 0.95, 1e-8)}


@pytest.mark.parametrize("rel", ["hf_run/step_5", "hf_consolidated"])
def test_missing_betas_and_eps_name_the_flags(rel: str) -> None:
    reader = HFStorageReader(FAMILY / rel, options=ReaderOptions(beta1=0.9))
    with pytest.raises(AdamscopeError, match=r"stores no betas/eps; pass --beta2, --eps"):
        next(reader.iter_tensors())


def test_run_folder_is_discovered_in_step_order_and_inspect_prints_it() -> None:
    found = discover(FAMILY / "hf_run")
    assert [f.path.name for f in found] == ["step_3", "step_5"]
    assert {f.reader for f in found} == {HFStorageReader}
    args = ["inspect", str(FAMILY / "hf_run"), "--beta1", "0.9", "--beta2", "0.95", "--eps", "1e-8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (
        "dcp-hf-safetensors" in result.output
        and "step 5, 6 tensors, 87 parameters" in result.output
    )
    assert "betas=(0.9, 0.95) eps=1e-08" in result.output
    bare = CliRunner().invoke(app, ["inspect", str(FAMILY / "hf_run")])
    assert bare.exit_code == 2 and "pass --beta1, --beta2, --eps" in bare.output


def test_consolidated_steps_come_from_the_sharded_files(tmp_path: Path, caplog) -> None:  # noqa: ANN001
    """torch 2.13's consolidation writes every 0-d tensor (the steps) as 0: the steps are taken
    from the per-rank files in sharded/, and without them the zero step is refused."""
    from safetensors import safe_open

    folder = FAMILY / "hf_consolidated"
    with safe_open(str(folder / "model-00001-of-00001.safetensors"), "pt") as f:
        assert float(f.get_tensor("optimizer.state.head.bias.step")) == 0.0  # the torch bug
    (ts, *_) = HFStorageReader(folder, options=HP).iter_tensors()
    assert ts.step == 5.0 and "sharded" in caplog.text
    alone = tmp_path / "consolidated"
    alone.mkdir()
    for name in ("model-00001-of-00001.safetensors", "model.safetensors.index.json"):
        shutil.copy(folder / name, alone / name)
    with pytest.raises(CorruptCheckpointError, match="is 0, which Adam never saves"):
        next(HFStorageReader(alone, options=HP).iter_tensors())


@pytest.mark.parametrize(
    ("rank", "message"),
    [
        (1, "hold 3 elements, the tensor .* has 7 .a rank's file is missing"),
        # the last rank's shards look like a smaller tensor; the steps it held are missing
        (2, "no step for .* is one missing"),
    ],
)
def test_a_missing_rank_file_is_reported(tmp_path: Path, rank: int, message: str) -> None:
    shutil.copytree(FAMILY / "hf_run" / "step_5", tmp_path / "step_5")
    (tmp_path / "step_5" / f"shard-0000{rank}-model-00001-of-00001.safetensors").unlink()
    reader = HFStorageReader(tmp_path / "step_5", options=HP)
    with pytest.raises(CorruptCheckpointError, match=message):
        list(reader.iter_tensors())


def test_overlapping_shards_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    info = {k: {"saved_offsets": [o]} for k, o in (("a", 0), ("b", 0))}
    for rank, at in ((1, 0), (2, 1)):  # rows [0, 2) and [1, 3) of a 3-row tensor: overlap
        tensors = {f"optimizer.state.w.{s}": torch.ones(2) for s in ("exp_avg", "exp_avg_sq")}
        tensors["optimizer.state.w.step"] = torch.tensor(2.0)
        info = {k: {"saved_offsets": [] if k.endswith("step") else [at]} for k in tensors}
        save_file(
            tensors,
            str(tmp_path / f"shard-0000{rank}-model-00001-of-00001.safetensors"),
            metadata={"DCP_SHARDING_INFO": json.dumps(info)},
        )
    with pytest.raises(CorruptCheckpointError, match="overlap"):
        list(HFStorageReader(tmp_path, options=HP).iter_tensors())


def test_a_symlinked_shard_leading_outside_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(FAMILY / "hf_run/step_5/shard-00002-model-00001-of-00001.safetensors", outside)
    folder = tmp_path / "ck"
    folder.mkdir()
    shutil.copy(FAMILY / "hf_run/step_5/shard-00001-model-00001-of-00001.safetensors", folder)
    os.symlink(outside, folder / "shard-00002-model-00001-of-00001.safetensors")
    with pytest.raises(CorruptCheckpointError, match="leads outside the checkpoint folder"):
        HFStorageReader(folder, options=HP)


def test_a_safetensors_file_that_is_a_zip_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    torch.save({"w": torch.ones(3)}, path)
    with pytest.raises(CorruptCheckpointError, match=r"a zip archive \(a torch.save file\?\)"):
        registry.detect(path)


def test_torchs_advice_to_drop_weights_only_is_never_relayed(tmp_path: Path) -> None:
    """A DCP bytes entry that weights_only refuses: the one line names the file and the
    unpickler's reason, without torch's "re-run with weights_only=False" advice."""
    from fractions import Fraction

    import torch.distributed.checkpoint as dcp

    state = {
        "w": {"step": torch.tensor(1.0), "exp_avg": torch.ones(3), "exp_avg_sq": torch.ones(3)}
    }
    group = {"lr": Fraction(1, 3), "betas": (0.9, 0.95), "eps": 1e-8, "params": ["w"]}
    dcp.save({"optim": {"state": state, "param_groups": [group]}}, checkpoint_id=str(tmp_path))
    with pytest.raises(UnsafePickleError) as err:
        list(DCPReader(tmp_path, options=ReaderOptions()).iter_tensors())
    text = str(err.value)
    assert "refused by weights_only" in text and "fractions" in text.lower()
    assert "False" not in text and "\n" not in text


_WRITE = """
import sys, torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter, HuggingFaceStorageWriter
from torch.distributed.checkpoint.filesystem import SerializationFormat
n = 4_000_000  # 16 MB of float32 each for exp_avg and exp_avg_sq
state = {"optimizer.state.w.step": torch.tensor(1.0), "optimizer.state.w.exp_avg": torch.ones(n),
         "optimizer.state.w.exp_avg_sq": torch.ones(n)}
if sys.argv[2] == "hf":
    dcp.save(state, storage_writer=HuggingFaceStorageWriter(sys.argv[1]))
else:  # with param_groups, which FileSystemWriter stores as torch.save blobs
    w = {k.rsplit(".", 1)[1]: v for k, v in state.items()}
    groups = [{"lr": 0.1, "betas": (0.9, 0.95), "eps": 1e-8, "params": ["w"]}]
    sd = {"optim": {"state": {"w": w}, "param_groups": groups}}
    fmt = SerializationFormat.SAFETENSORS
    dcp.save(sd, storage_writer=FileSystemWriter(sys.argv[1], serialization_format=fmt))
"""


@pytest.mark.parametrize("kind", ["hf", "fs"])
def test_streaming_a_large_shard_keeps_memory_bounded(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "big"
    script = textwrap.dedent(_WRITE)
    subprocess.run([sys.executable, "-c", script, str(folder), kind], check=True)
    reader = HFStorageReader if kind == "hf" else DCPReader
    assert registry.detect(folder) is reader
    result = stream_rss(reader, folder, options=RUN_HP)
    assert result["n"] == 4_000_000
    assert result["m_total"] == 4_000_000 - (1 << 16)  # every chunk after the first was read
    assert result["growth_kb"] < 8 * 1024, result  # a few 256 KiB chunks, not the 16 MB tensor


def test_another_optimizers_state_is_named_not_unknown(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from adamscope.errors import NotAdamError

    sgd = {
        "optimizer.state.w.momentum_buffer": torch.ones(3),
        "optimizer.state.w.step": torch.ones(()),
    }
    save_file(sgd, str(tmp_path / "model-00001-of-00001.safetensors"))
    assert registry.detect(tmp_path) is HFStorageReader
    with pytest.raises(NotAdamError, match="holds momentum_buffer, step, no exp_avg"):
        HFStorageReader(tmp_path, options=HP)
