"""OLMo-core trainer checkpoints (fixtures/make_olmo_core.py: FSDP2 on 2 gloo ranks, saved by
OLMo-core 3.0's own Checkpointer at steps 3 and 5): `stepN/model_and_optim/` is a DCP folder whose
`.metadata` pickles OLMo-core's `_StorageInfo`, read by the DCP reader.

References: fixtures/olmo_core/truth.json from the live optimizer's full state dict at each save
(float64 statistics via fixtures/truth.py; rel 1e-12). Streaming memory is the DCP reader's,
bounded in tests/readers/test_dcp.py (writing a large OLMo-core checkpoint needs OLMo-core).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _truth_helpers import FIXTURES, assert_matches, load_truth
from typer.testing import CliRunner

from adamscope.cli import app
from adamscope.config import ReaderOptions
from adamscope.errors import UnsafePickleError
from adamscope.pipeline.discovery import discover
from adamscope.readers import registry
from adamscope.readers.dcp import DCPReader

FAMILY = FIXTURES / "olmo_core"
TRUTH = load_truth("olmo_core")
MODEL_ORDER = ["embed.weight", "embed.bias", "norm.weight", "norm.bias", "head.weight", "head.bias"]


@pytest.mark.parametrize("rel", list(TRUTH))
def test_names_numel_and_statistics_match_the_live_optimizer(rel: str) -> None:
    assert registry.detect(FAMILY / rel) is DCPReader
    reader = DCPReader(FAMILY / rel, options=ReaderOptions())
    assert reader.folder.name == "model_and_optim"
    states = list(reader.iter_tensors())
    expected = TRUTH[rel]["tensors"]
    assert [ts.name for ts in states] == MODEL_ORDER  # the model keys saved beside give order
    assert sorted(expected) == sorted(MODEL_ORDER)
    for ts in states:
        assert_matches(ts, expected[ts.name], chunk=5)  # hyper-parameters from the file
    info = reader.describe()
    assert info.step == TRUTH[rel]["step"] and info.n_params == 87


def test_run_folder_is_discovered_in_step_order_and_inspect_prints_it() -> None:
    found = discover(FAMILY / "run")
    assert [f.path.name for f in found] == ["step3", "step5"]
    result = CliRunner().invoke(app, ["inspect", str(FAMILY / "run")])
    assert result.exit_code == 0, result.output
    assert "step 5, 6 tensors, 87 parameters" in result.output


def test_only_olmo_cores_own_storage_info_class_is_allowed(tmp_path: Path) -> None:
    folder = tmp_path / "model_and_optim"
    shutil.copytree(FAMILY / "run/step5/model_and_optim", folder)
    data = (folder / ".metadata").read_bytes()
    good = b"olmo_core.distributed.checkpoint.filesystem"
    assert good in data  # the real file pickles OLMo-core's class
    evil = data.replace(good, b"olmo_core.distributed.checkpoint.filesysteX")
    (folder / ".metadata").write_bytes(evil)
    with pytest.raises(UnsafePickleError, match="filesysteX._StorageInfo"):
        DCPReader(folder, options=ReaderOptions())
