"""HF Trainer reader against real `transformers.Trainer` checkpoints (fixtures/make_hf_trainer.py).

References: fixtures/hf_trainer/truth.json, written from the live optimizer at save time with
float64 numpy (fixtures/truth.py). The reader's m/v, streamed in small chunks, go through the same
`tensor_truth`, so statistics must agree to float64 rounding (rel 1e-12).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from adamscope.config import ReaderOptions
from adamscope.errors import NamingError, NotAdamError, UnsupportedFormatError
from adamscope.readers.hf_trainer import HFTrainerReader
from adamscope.readers.naming.match import _position_candidates, ambiguity_marker
from adamscope.vocab import TensorState

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
FAMILY = FIXTURES / "hf_trainer"
TRUTH = json.loads((FAMILY / "truth.json").read_text())
CHECKPOINTS = sorted(TRUTH["checkpoints"])
HP_KEYS = ("beta1", "beta2", "eps", "lr", "weight_decay")


def _truth_module():
    spec = importlib.util.spec_from_file_location("_fixture_truth", FIXTURES / "truth.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tensor_truth = _truth_module().tensor_truth


def _read(ts: TensorState, chunk: int = 777) -> tuple[np.ndarray, np.ndarray]:
    ms, vs, pos = [], [], 0
    for start, m, v, vmax in ts.chunks(chunk):
        assert start == pos and len(m) <= chunk and vmax is None
        ms.append(m.double().numpy())
        vs.append(v.double().numpy())
        pos += len(m)
    assert pos == ts.numel
    return np.concatenate(ms).reshape(ts.shape), np.concatenate(vs).reshape(ts.shape)


def _stats(ts: TensorState) -> dict:
    m, v = _read(ts)
    hp = ts.hp
    return tensor_truth(
        m,
        v,
        step=ts.step,
        beta1=hp.beta1,
        beta2=hp.beta2,
        eps=hp.eps,
        lr=hp.lr,
        weight_decay=hp.weight_decay,
    )


def _assert_matches(ts: TensorState, want: dict) -> None:
    assert list(ts.shape) == want["shape"] and ts.numel == want["numel"]
    assert ts.step == want["step"]
    for k in HP_KEYS:
        assert getattr(ts.hp, k) == pytest.approx(want[k], rel=1e-12), k
    got = _stats(ts)
    for k, value in want.items():
        if isinstance(value, float):
            assert got[k] == pytest.approx(value, rel=1e-12, abs=1e-300, nan_ok=True), k
        else:
            assert got[k] == value, k


def _reader(path: Path, **options) -> HFTrainerReader:
    assert HFTrainerReader.probe(path)
    return HFTrainerReader(path, options=ReaderOptions(**options))


@pytest.fixture
def no_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import transformers` raises ImportError, as on a machine without it."""
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)


@pytest.mark.parametrize("key", CHECKPOINTS)
def test_with_transformers_matches_live_optimizer(key: str) -> None:
    want = TRUTH["checkpoints"][key]
    reader = _reader(FAMILY / key)
    states = list(reader.iter_tensors())
    assert [ts.name for ts in states] == list(want["tensors"])  # names, in optimizer id order
    for ts in states:
        assert not ts.notes
        _assert_matches(ts, want["tensors"][ts.name])
    info = reader.describe()
    assert info.step == want["step"] == int(states[0].step)
    assert info.n_tensors == len(want["tensors"])
    assert info.n_params == sum(t["numel"] for t in want["tensors"].values())
    assert "meta device" in info.notes[0]


def test_probe_and_optimizer_file() -> None:
    folder = FAMILY / "gpt2" / "checkpoint-10"
    assert HFTrainerReader.probe(folder / "optimizer.pt")
    names = [ts.name for ts in _reader(folder / "optimizer.pt").iter_tensors()]
    assert names == list(TRUTH["checkpoints"]["gpt2/checkpoint-10"]["tensors"])
    assert not HFTrainerReader.probe(FAMILY / "gpt2")  # the run folder holds checkpoints
    assert not HFTrainerReader.probe(folder / "model.safetensors")


@pytest.mark.parametrize("key", CHECKPOINTS)
def test_fallback_never_mislabels(
    key: str, no_transformers: None, caplog: pytest.LogCaptureFixture
) -> None:
    want = TRUTH["checkpoints"][key]
    with caplog.at_level(logging.WARNING, logger="adamscope.readers.hf_trainer"):
        states = list(_reader(FAMILY / key).iter_tensors())
    truth_names = list(want["tensors"])
    assert len(states) == len(truth_names)
    assert len({ts.name for ts in states}) == len(states)  # markers stay unique
    n_ambiguous = 0
    for ts, true_name in zip(states, truth_names, strict=True):
        if ts.name != true_name:  # only allowed as an explicit ambiguity marker ...
            n_ambiguous += 1
            assert "{" in ts.name and ts.name not in truth_names
            (note,) = ts.notes
            assert true_name in note.split("one of ", 1)[1].split(", ")  # ... listing the truth
        _assert_matches(ts, want["tensors"][true_name])
    assert "not importable" in caplog.text
    assert f"{n_ambiguous} of {len(states)} parameter names are ambiguous" in caplog.text
    by_name = {ts.name for ts in states}
    if key.startswith("gpt2"):
        # every 2-D GPT-2 weight has its own shape: group 0 is named exactly
        assert {n for n, t in want["tensors"].items() if len(t["shape"]) == 2} <= by_name
        assert "transformer.h.1.attn.c_attn.bias" in by_name
    else:
        assert "model.layers.1.mlp.down_proj.weight" in by_name
        assert "model.layers.0.self_attn.{o_proj|q_proj}.weight#2" in by_name
        assert "model.layers.1.self_attn.{k_proj|v_proj}.weight#1" in by_name
        assert "model.layers.0.mlp.{gate_proj|up_proj}.weight#1" in by_name
        assert "{lm_head|model.embed_tokens}.weight#2" in by_name


def _copy(key: str, tmp_path: Path) -> Path:
    dst = tmp_path / key.replace("/", "_")
    shutil.copytree(FAMILY / key, dst)
    return dst


def test_fallback_reads_sharded_safetensors(tmp_path: Path, no_transformers: None) -> None:
    from safetensors.torch import load_file, save_file

    folder = _copy("llama/checkpoint-20", tmp_path)
    expected = [ts.name for ts in _reader(folder).iter_tensors()]
    tensors = load_file(folder / "model.safetensors")
    keys = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((keys[::2], keys[1::2])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, folder / fname)
        weight_map.update(dict.fromkeys(part, fname))
    (folder / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert [ts.name for ts in _reader(folder).iter_tensors()] == expected


def test_wrong_config_raises_naming_error(tmp_path: Path) -> None:
    folder = _copy("llama/checkpoint-10", tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] = 48  # the model no longer matches the optimizer's shapes
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(NamingError, match=r"optimizer\.pt: param id \d+ has exp_avg shape"):
        list(_reader(folder).iter_tensors())
    cfg["num_hidden_layers"] = 3  # more parameters, and none of their shapes fit
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(NamingError, match=r"group 0 holds 16 tensors that do not fit"):
        list(_reader(folder).iter_tensors())
    cfg["num_hidden_layers"] = 1  # fewer parameters than the optimizer holds
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        NamingError,
        match=r"groups hold \[16, 5\] parameters but the model from config.json gives \[9, 3\]",
    ):
        list(_reader(folder).iter_tensors())


def test_config_with_extra_layer_marks_not_mislabels(tmp_path: Path) -> None:
    # A config with one layer more reads as "one layer frozen": every name that several
    # placements could take is marked, and the marker lists the truth.
    folder = _copy("llama/checkpoint-10", tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (folder / "config.json").write_text(json.dumps(cfg))
    truth = list(TRUTH["checkpoints"]["llama/checkpoint-10"]["tensors"])
    states = list(_reader(folder).iter_tensors())
    assert any("{" in ts.name for ts in states)
    for ts, name in zip(states, truth, strict=True):
        assert ts.name == name or name in ts.notes[0].split("one of ", 1)[1].split(", ")


def test_config_names_never_call_arbitrary_callables(tmp_path: Path) -> None:
    folder = _copy("gpt2/checkpoint-20", tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["pipeline"]  # a transformers function, not a model class
    (folder / "config.json").write_text(json.dumps(cfg))
    names = [ts.name for ts in _reader(folder).iter_tensors()]
    assert names == list(TRUTH["checkpoints"]["gpt2/checkpoint-20"]["tensors"])


def test_unbuildable_config_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = _copy("gpt2/checkpoint-20", tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "no-such-model", ["NoSuchModel"]
    (folder / "config.json").write_text(json.dumps(cfg))
    reader = _reader(folder)
    with caplog.at_level(logging.WARNING):
        names = [ts.name for ts in reader.iter_tensors()]
    assert "cannot build the model" in caplog.text
    assert "transformer.wte.weight" in names and any("{" in n for n in names)
    assert reader.describe().notes[0] == "names: matched by shape from model.safetensors"


def test_model_option_points_at_config(tmp_path: Path) -> None:
    folder = _copy("llama/checkpoint-10", tmp_path)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (folder / "config.json").rename(model_dir / "config.json")
    names = [ts.name for ts in _reader(folder, model=model_dir).iter_tensors()]
    assert names == list(TRUTH["checkpoints"]["llama/checkpoint-10"]["tensors"])


def test_param_names_in_groups_win(tmp_path: Path) -> None:
    import torch

    folder = _copy("gpt2/checkpoint-10", tmp_path)
    sd = torch.load(folder / "optimizer.pt", weights_only=True)  # our own fixture, not user input
    for g in sd["param_groups"]:
        g["param_names"] = [f"named.{i}" for i in g["params"]]
    torch.save(sd, folder / "optimizer.pt")
    reader = _reader(folder)
    assert [ts.name for ts in reader.iter_tensors()][:2] == ["named.0", "named.1"]
    assert "param_names" in reader.describe().notes[0]


def test_sgd_is_not_adam(tmp_path: Path) -> None:
    import torch

    folder = _copy("gpt2/checkpoint-10", tmp_path)
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))]
    opt = torch.optim.SGD([{"params": params[1:]}, {"params": params[:1]}], lr=0.1, momentum=0.9)
    sum(p.sum() for p in params).backward()
    opt.step()
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    with pytest.raises(NotAdamError, match="SGD"):
        list(_reader(folder).iter_tensors())


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("global_step30", "DeepSpeed checkpoint"),
        ("optimizer.bin", "FSDP"),
        ("optimizer_0", "FSDP"),
        (None, "save_only_model"),
    ],
)
def test_other_layouts_are_refused(tmp_path: Path, layout: str | None, message: str) -> None:
    folder = tmp_path / "checkpoint-30"
    folder.mkdir()
    (folder / "trainer_state.json").write_text('{"global_step": 30}')
    if layout == "optimizer.bin":
        (folder / layout).write_bytes(b"")
    elif layout is not None:
        (folder / layout).mkdir()
    assert HFTrainerReader.probe(folder)
    with pytest.raises(UnsupportedFormatError, match=message):
        HFTrainerReader(folder, options=ReaderOptions())


def test_position_candidates_follow_module_order() -> None:
    names = [f"m.layers.{i}.attn.{p}.weight" for i in (10, 2) for p in ("q", "o")]
    got = _position_candidates(names)
    l2 = {"m.layers.2.attn.q.weight", "m.layers.2.attn.o.weight"}
    l10 = {"m.layers.10.attn.q.weight", "m.layers.10.attn.o.weight"}
    assert got == [l2, l2, l10, l10]  # index order is numeric, not alphabetical
    assert _position_candidates(["m.sub.w", "m.w"]) == [{"m.w"}, {"m.sub.w"}]  # own params first
    assert _position_candidates(["a.w", "b.w"]) == [{"a.w", "b.w"}] * 2


def test_ambiguity_marker() -> None:
    assert (
        ambiguity_marker(["x.0.q_proj.weight", "x.0.o_proj.weight"]) == "x.0.{o_proj|q_proj}.weight"
    )
    assert (
        ambiguity_marker(["lm_head.weight", "model.embed.weight"]) == "{lm_head|model.embed}.weight"
    )
    assert ambiguity_marker([f"t.h.{i}.b" for i in range(5)]) == "t.h.{any of 5}.b"
