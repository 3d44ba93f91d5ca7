"""Orbax / optax checkpoints (fixtures/make_orbax.py: optax AdamW on 2 JAX processes over gloo,
parameters sharded on dim 0 across them, saved by orbax's CheckpointManager at steps 3 and 5, and
once with use_ocdbt=False). Reading needs tensorstore only (the `jax` extra), not jax.

References: fixtures/orbax/truth.json from the live optax state at save time (mu, nu, count
gathered from both processes; float64 statistics via fixtures/truth.py); every statistic must
agree to float64 rounding (rel 1e-12). optax stores no betas/eps: they are passed as options, the
values the run used (0.9, 0.95, 1e-8).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _truth_helpers import FIXTURES, assert_matches, load_truth, stream_rss
from typer.testing import CliRunner

from adamscope.cli import app
from adamscope.config import ReaderOptions
from adamscope.errors import (
    AdamscopeError,
    CorruptCheckpointError,
    NotAdamError,
    UnsupportedFormatError,
)
from adamscope.pipeline.discovery import discover
from adamscope.readers import registry
from adamscope.readers.orbax import OrbaxReader

FAMILY = FIXTURES / "orbax"
TRUTH = load_truth("orbax")
NAMES = ["dense.bias", "dense.kernel", "embed.embedding", "norm.scale"]  # the pytree's order
RUN_HP = {"beta1": 0.9, "beta2": 0.95, "eps": 1e-8}  # make_orbax.py
HP = ReaderOptions(**RUN_HP)


@pytest.fixture
def tensorstore():  # noqa: ANN201
    return pytest.importorskip("tensorstore")  # the `jax` extra; CI installs it with `test`


needs_tensorstore = pytest.mark.usefixtures("tensorstore")


def test_without_tensorstore_the_error_gives_the_install_command(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setitem(sys.modules, "tensorstore", None)  # `import tensorstore` fails
    assert registry.detect(FAMILY / "run/5") is OrbaxReader  # detection reads JSON only
    with pytest.raises(UnsupportedFormatError, match=r'pip install "adamscope\[jax\]"'):
        OrbaxReader(FAMILY / "run/5", options=HP)


@needs_tensorstore
@pytest.mark.parametrize("rel", list(TRUTH))
def test_names_numel_and_statistics_match_the_live_optax_state(rel: str) -> None:
    assert registry.detect(FAMILY / rel) is OrbaxReader
    reader = OrbaxReader(FAMILY / rel, options=HP)
    states = list(reader.iter_tensors())
    expected = TRUTH[rel]["tensors"]
    assert [ts.name for ts in states] == NAMES == list(expected)
    for ts in states:
        assert_matches(ts, expected[ts.name], chunk=7)  # chunks straddle the two processes' shards
    info = reader.describe()
    assert info.step == TRUTH[rel]["step"] and info.n_tensors == 4
    assert info.n_params == sum(t["numel"] for t in expected.values()) == 71


@needs_tensorstore
def test_the_item_folder_reads_like_its_step_folder() -> None:
    a = [ts.name for ts in OrbaxReader(FAMILY / "run/5/default", options=HP).iter_tensors()]
    assert a == NAMES and registry.detect(FAMILY / "run/5/default") is OrbaxReader


@needs_tensorstore
def test_run_folder_is_discovered_in_step_order_and_inspect_prints_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(FAMILY / "run", run)
    (run / "7.orbax-checkpoint-tmp-1796").mkdir()  # a save in progress: not a checkpoint yet
    found = discover(run)
    assert [f.path.name for f in found] == ["3", "5"] and {f.reader for f in found} == {OrbaxReader}
    args = ["inspect", str(run), "--beta1", "0.9", "--beta2", "0.95", "--eps", "1e-8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "format orbax" in result.output and "step 5, 4 tensors, 71 parameters" in result.output
    bare = CliRunner().invoke(app, ["inspect", str(run)])
    assert bare.exit_code == 2 and "optax (count, mu, nu) stores no betas/eps" in bare.output


@needs_tensorstore
def test_missing_betas_and_eps_name_the_flags() -> None:
    reader = OrbaxReader(FAMILY / "run/3", options=ReaderOptions(eps=1e-8))
    with pytest.raises(AdamscopeError, match=r"pass --beta1, --beta2 \("):
        next(reader.iter_tensors())


def _edit_metadata(folder: Path, edit) -> None:  # noqa: ANN001
    path = folder / "_METADATA"
    meta = json.loads(path.read_text())
    edit(meta["tree_metadata"])
    path.write_text(json.dumps(meta))


@needs_tensorstore
def test_mu_without_nu_is_not_adam(tmp_path: Path) -> None:
    item = tmp_path / "default"
    shutil.copytree(FAMILY / "run/3/default", item)
    _edit_metadata(item, lambda t: [t.pop(k) for k in list(t) if "'nu'" in k])
    with pytest.raises(NotAdamError, match="mu but no nu"):
        OrbaxReader(item, options=HP)


@needs_tensorstore
def test_a_symlink_leading_outside_and_a_fifo_are_refused(tmp_path: Path) -> None:
    import os

    item = tmp_path / "default"
    shutil.copytree(FAMILY / "run/3/default", item)
    os.symlink("/etc/hostname", item / "d" / "extra")
    with pytest.raises(CorruptCheckpointError, match="leads outside the checkpoint folder"):
        OrbaxReader(item, options=HP)
    (item / "d" / "extra").unlink()
    os.mkfifo(item / "d" / "pipe")
    with pytest.raises(CorruptCheckpointError, match="FIFO"):
        OrbaxReader(item, options=HP)


_WRITE = """
import json, os, sys
import numpy as np, tensorstore as ts
item, n = os.path.abspath(sys.argv[1]), int(sys.argv[2])
os.makedirs(item)
tree = {}
def put(path, data, chunks):
    kv = {"driver": "ocdbt", "base": "file://" + item, "path": ".".join(path) + "/"}
    md = {"shape": list(data.shape), "chunks": chunks, "dtype": data.dtype.str,
          "compressor": {"id": "zstd", "level": 1}}
    ts.open({"driver": "zarr", "kvstore": kv, "metadata": md}, create=True).result().write(data).result()
    keys = [{"key": k, "key_type": 1 if k.isdigit() else 2} for k in path]
    tree[str(path)] = {"key_metadata": keys, "value_metadata": {"value_type": "jax.Array"}}
put(("opt_state", "0", "count"), np.asarray(1, np.int32), [])
for s in ("mu", "nu"):  # 64 MB each, 1 MiB chunks (Orbax's SaveArgs(chunk_byte_size=1 << 20))
    put(("opt_state", "0", s, "w"), np.ones(n, np.float32), [1 << 18])
json.dump({"tree_metadata": tree}, open(os.path.join(item, "_METADATA"), "w"))
"""


@needs_tensorstore
def test_streaming_a_large_array_keeps_memory_bounded(tmp_path: Path) -> None:
    """Written with tensorstore (what Orbax writes through) in Orbax's layout: _METADATA tree
    paths, zarr v2 arrays under OCDBT keys. Reading costs one decoded zarr chunk per array plus
    the slice, and a roughly constant ~20 MB of allocator growth (tensorstore's threads and
    torch's ops; measured 17-23 MB for 4M- and 16M-element arrays), not the 128 MB of m and v."""
    item = tmp_path / "default"
    n = 16_000_000
    subprocess.run([sys.executable, "-c", textwrap.dedent(_WRITE), str(item), str(n)], check=True)
    assert registry.detect(item) is OrbaxReader
    result = stream_rss(OrbaxReader, item, options=RUN_HP)
    assert result["n"] == n
    assert result["m_total"] == n - (1 << 16)  # every chunk after the first was read
    assert result["growth_kb"] < 40 * 1024, result
