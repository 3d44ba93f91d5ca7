"""Malformed metadata gives one line, not a traceback, and the same one from inspect and analyze
(inspect's reader calls go through analyze's `_guard`): a global_step of inf or 1e30, JSON nested
past the parser, an index without weight_map or not JSON, a garbage model.safetensors, a step
tensor of two elements, an lr of 10**400, DeepSpeed param_shapes that are not integers or a config
that is a list, DCP offsets that are None or strings."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _hostile_helpers import FIXTURES, bounded, cli, error_lines

HF = FIXTURES / "hf_trainer" / "gpt2" / "checkpoint-10"


def _state(text: str) -> Callable[[Path], None]:
    return lambda d: (d / "trainer_state.json").write_text(text)


def _by_shapes(index: str | None = None, model: bytes | None = None) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        (d / "config.json").unlink()  # names from model.safetensors(.index.json)
        if index is not None:
            (d / "model.safetensors.index.json").write_text(index)
        if model is not None:
            (d / "model.safetensors").write_bytes(model)

    return edit


HF_CASES = {
    "global_step_inf": (_state('{"global_step": Infinity}'), "global_step is inf"),
    "global_step_1e30": (_state('{"global_step": 1e30}'), "global_step is 1000000"),
    "deep_json": (_state('{"a":' + "[" * 100_000 + "]" * 100_000 + "}"), "nested too deeply"),
    "index_without_weight_map": (_by_shapes(index='{"metadata": {}}'), "no 'weight_map'"),
    "index_not_json": (_by_shapes(index="{nope"), "not valid JSON"),
    "garbage_safetensors": (_by_shapes(model=b"\x10" + bytes(7) + b"garbage garbage!"), "JSON"),
}


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_hf_metadata(case: str, tmp_path: Path) -> None:
    edit, words = HF_CASES[case]
    folder = tmp_path / "checkpoint-10"
    shutil.copytree(HF, folder)
    edit(folder)
    with bounded(60):
        rc, err = cli("inspect", folder)
    assert rc == 2, err
    (line,) = error_lines(err)
    assert words in line and str(folder) in line, line


def _torch_file(tmp: Path, edit: Callable[[dict], None]) -> Path:
    sd = torch.load(FIXTURES / "torch" / "adam_names.pt", weights_only=True)
    edit(sd)
    torch.save(sd, tmp / "opt.pt")
    return tmp / "opt.pt"


def _two_element_step(sd: dict) -> None:
    for entry in sd["state"].values():
        entry["step"] = torch.tensor([1.0, 2.0])


def _huge_lr(sd: dict) -> None:
    sd["param_groups"][0]["lr"] = 10**400


@pytest.mark.parametrize("edit", [_two_element_step, _huge_lr])
def test_inspect_and_analyze_say_the_same_line(edit: Callable, tmp_path: Path) -> None:
    path = _torch_file(tmp_path, edit)
    with bounded(60):
        rc1, err1 = cli("inspect", path)
        rc2, err2 = cli("analyze", path, "-o", tmp_path / "out", "-q")
    assert rc1 == rc2 == 2, (err1, err2)
    (a,), (b,) = error_lines(err1), error_lines(err2)
    assert str(path) in a and str(path) in b
    assert a.split("(", 1)[-1] == b.split("(", 1)[-1], (a, b)  # the same cause


def _deepspeed(tmp: Path, model_edit: dict) -> Path:
    root = tmp / "ds"
    tag = root / "global_step1"
    tag.mkdir(parents=True)
    (root / "latest").write_text("global_step1")
    model = {"param_shapes": [{"w": (4,)}], "ds_config": {"zero_optimization": {"stage": 2}}}
    torch.save({**model, **model_edit}, tag / "mp_rank_00_model_states.pt")
    group = {"lr": 0.1, "betas": (0.9, 0.95), "eps": 1e-8, "params": [0]}
    inner = {"state": {0: {"step": 1, "exp_avg": torch.ones(4), "exp_avg_sq": torch.ones(4)}}}
    outer = {"zero_stage": 2, "base_optimizer_state": {**inner, "param_groups": [group]}}
    torch.save({"optimizer_state_dict": outer}, tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return root


@pytest.mark.parametrize(
    "edit,words",
    [
        ({"param_shapes": [{"w": ("four",)}]}, "not an integer"),
        ({"param_shapes": [{"w": (2.5,)}]}, "not an integer"),
        ({"param_shapes": [{"w": 4}]}, "not name -> shape"),
        ({"ds_config": ["not", "a", "dict"]}, None),  # a list config: defaults, read fine
    ],
    ids=["string_dim", "float_dim", "int_shape", "config_list"],
)
def test_deepspeed_metadata(edit: dict, words: str | None, tmp_path: Path) -> None:
    root = _deepspeed(tmp_path, edit)
    with bounded(60):
        rc, err = cli("inspect", root)
    if words is None:
        assert rc == 0, err
        return
    assert rc == 2, err
    (line,) = error_lines(err)
    assert words in line and "param_shapes" in line, line


@pytest.mark.parametrize("bad", [None, "12", 1e30])
def test_dcp_offsets_that_are_not_integers(bad: object, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """The byte offset of a real .metadata's first storage entry replaced as it is unpickled."""
    from adamscope.readers import dcp

    folder = tmp_path / "fsdp2"
    shutil.copytree(FIXTURES / "dcp" / "fsdp2", folder)
    real = dcp._entries

    def spoiled(md, folder, source):  # noqa: ANN001, ANN202
        info = next(iter(md.get("storage_data").values()))
        fields, slots = info.state if isinstance(info.state, tuple) else (info.state, None)
        info.state = ({**fields, "offset": bad}, slots) if slots else {**fields, "offset": bad}
        return real(md, folder, source)

    monkeypatch.setattr(dcp, "_entries", spoiled)
    with bounded(30):
        rc, err = cli("inspect", folder)
    assert rc == 2, err
    (line,) = error_lines(err)
    assert ".metadata" in line and "byte offset" in line, line


def test_brief_describes_untrusted_values_in_bounded_time() -> None:
    """What error messages quote of a file's values: a DAG of 2**60 nodes through shared
    references, an integer of 300,000 digits (str() of it raises past 4,300), a string of a
    million characters and a stub whose repr would walk its state are each a short line, at once."""
    import time

    from adamscope.readers.guard import brief
    from adamscope.readers.unpickler import Stub

    dag: list = []
    for _ in range(60):
        dag = [dag, dag]
    t0 = time.perf_counter()
    texts = [brief(dag), brief(10**300_000), brief("x" * 10**6, 40), repr(Stub("m.C", (dag,)))]
    assert time.perf_counter() - t0 < 1.0
    assert all(len(t) <= 200 for t in texts), texts
    assert texts[1] == "an integer of 996579 bits"
    assert brief((0.9, 0.95)) == "(0.9, 0.95)"
