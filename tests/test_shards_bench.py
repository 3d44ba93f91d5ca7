"""bench --shards: its generated ZeRO-3 and DCP checkpoints are what the frameworks write, and
what the readers return of them is exactly the state the generator put there."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest
import torch

from adamscope.api import AnalyzeOptions, analyze
from adamscope.config import ReaderOptions
from adamscope.perf.bench import gpt_shapes
from adamscope.perf.shard_checkpoints import STEP, make_dcp, make_zero3, tensor_state
from adamscope.readers.dcp import DCPReader, read_metadata
from adamscope.readers.deepspeed import DeepSpeedReader
from adamscope.readers.torchzip import load_lazy

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PARAMS = 300_000  # gpt_shapes: d=32, a few layers, vocab 512: 1-D tensors smaller than the world


_LEAVES = ("module", "ds_config", "zero_stage", "loss_scaler")  # not the layout: the model's
# names, the run's config, and the two values written as plain Python for DeepSpeed's classes


def _keys(tree: object, depth: int = 3) -> object:
    """The dict keys of a (lazily loaded) pickle tree, `depth` levels down."""
    if not isinstance(tree, dict) or depth == 0:
        return None
    return {k: None if k in _LEAVES else _keys(v, depth - 1) for k, v in tree.items()}


@pytest.fixture(scope="module")
def zero3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_zero3(tmp_path_factory.mktemp("z3") / "ckpt", params=PARAMS, world=5)


@pytest.fixture(scope="module")
def dcp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dcp(tmp_path_factory.mktemp("dcp") / "ckpt", params=PARAMS, world=5)


def _check_values(reader: object) -> int:
    index = {n: i for i, (n, _) in enumerate(gpt_shapes(PARAMS))}
    count = 0
    for ts in reader.iter_tensors():
        m0, v0 = tensor_state(index[ts.name], ts.numel)
        parts = list(ts.chunks(1000))
        assert all(m.numel() <= 1000 for _, m, _, _ in parts)
        assert [s for s, *_ in parts] == list(range(0, ts.numel, 1000))
        assert torch.equal(torch.cat([m for _, m, _, _ in parts]), m0), ts.name
        assert torch.equal(torch.cat([v for _, _, v, _ in parts]), v0), ts.name
        assert ts.step == STEP and (ts.hp.beta1, ts.hp.beta2, ts.hp.eps) == (0.9, 0.95, 1e-8)
        assert ts.hp.weight_decay == (0.1 if len(ts.shape) >= 2 else 0.0)
        count += 1
    return count


def test_zero3_layout_is_deepspeeds(zero3: Path) -> None:
    """Key for key the files DeepSpeed 0.19.8 wrote for fixtures/deepspeed/zero3_w2_fp32."""
    real = FIXTURES / "deepspeed" / "zero3_w2_fp32" / "global_step5"
    ours = zero3 / f"global_step{STEP}"
    assert (zero3 / "latest").read_text() == f"global_step{STEP}"
    assert sorted(p.name for p in ours.iterdir()) == sorted(
        f"zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt"
        for r in range(5)
        for kind in ("model", "optim")
    )
    for kind in ("model", "optim"):
        name = f"zero_pp_rank_0_mp_rank_00_{kind}_states.pt"
        a = load_lazy(real / name, trust_pickle=False)
        b = load_lazy(ours / name, trust_pickle=False)
        assert _keys(b) == _keys(a)
    opt = load_lazy(ours / "zero_pp_rank_3_mp_rank_00_optim_states.pt", trust_pickle=False)
    inner = opt["optimizer_state_dict"]
    assert inner["partition_count"] == 5
    for j, state in inner["optimizer_state_dict"]["state"].items():
        assert sorted(state) == ["exp_avg", "exp_avg_sq", "step"]
        assert inner["fp32_flat_groups"][j].numel == state["exp_avg"].numel


def test_zero3_reader_returns_the_generated_state(zero3: Path) -> None:
    reader = DeepSpeedReader(zero3, options=ReaderOptions())
    assert reader.world == 5 and reader.stage == 3
    assert _check_values(reader) == len(gpt_shapes(PARAMS))


def test_dcp_keys_are_fsdp2s(dcp: Path) -> None:
    real = read_metadata(FIXTURES / "dcp" / "fsdp2")
    ours = read_metadata(dcp)
    hp = lambda md: {k.rsplit(".", 1)[1] for k in md if ".param_groups." in k}  # noqa: E731
    assert hp(ours) == hp(real)
    assert sorted(p.name for p in dcp.glob("*.distcp")) == [f"__{r}_0.distcp" for r in range(5)]
    wte = ours["optim.state.transformer.wte.weight.exp_avg"]
    rows = math.ceil(512 / 5)  # FSDP2's dim-0 shards
    assert [c.offsets[0] for c in wte.chunks] == [r * rows for r in range(5)]


def test_dcp_reader_returns_the_generated_state(dcp: Path) -> None:
    assert _check_values(DCPReader(dcp, options=ReaderOptions())) == len(gpt_shapes(PARAMS))


def test_analyze_the_same_with_one_and_four_reader_threads(
    zero3: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = []
    for threads in ("1", "4"):
        monkeypatch.setenv("ADAMSCOPE_READ_THREADS", threads)
        out = tmp_path / threads
        analyze(zero3, options=AnalyzeOptions(out=out))
        frames.append(pl.read_parquet(out / "tensors.parquet"))
    assert frames[0].equals(frames[1])
    numel = dict(zip(frames[0]["tensor"], frames[0]["numel"], strict=True))
    assert numel == {n: math.prod(s) for n, s in gpt_shapes(PARAMS)}


def test_bench_measures_each_kind_and_says_why_a_converter_is_skipped(tmp_path: Path) -> None:
    import importlib.util

    from adamscope.perf.shards_bench import run_shards_bench

    result = run_shards_bench(
        ranks=[3], params=PARAMS, reps=1, workdir=tmp_path, formats=("zero3",), say=lambda s: None
    )
    kinds = [r.kind for r in result.rows]
    assert kinds[:2] == ["read", "analyze"]
    read, analyze = result.rows[:2]
    assert (
        read.state_bytes
        == analyze.state_bytes
        == 8 * sum(math.prod(s) for _, s in gpt_shapes(PARAMS))
    )
    assert read.files == 3 and analyze.extra_disk == 0 and analyze.rss_bytes > 0
    if importlib.util.find_spec("deepspeed") is None:
        assert kinds == ["read", "analyze"]
        assert "ds_to_universal: deepspeed does not import" in result.skipped[0]
        assert "skipped: ds_to_universal" in result.report()
