"""Bare optimizer state_dict files (fixtures/make_torch.py) and `iter_adam_states` edge cases.

References: fixtures/torch/truth.json from the live optimizer (names via model.named_parameters()
identity, float64 statistics from fixtures/truth.py); synthetic state_dicts built in the test.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from _truth_helpers import FIXTURES, assert_matches, load_truth, stream

from adamscope.config import ReaderOptions
from adamscope.errors import NamingError, NotAdamError, UnsupportedFormatError
from adamscope.readers.optim_state import iter_adam_states
from adamscope.readers.torch_optim import TorchOptimReader
from adamscope.readers.torchzip import InMemoryTensor, load_lazy

FAMILY = FIXTURES / "torch"
TRUTH = load_truth("torch")
MODEL = FAMILY / "model_state.pt"


def _reader(name: str, **options: object) -> TorchOptimReader:
    return TorchOptimReader(FAMILY / name, options=ReaderOptions(**options))


@pytest.mark.parametrize(
    ("name", "options"),
    [("adam_names.pt", {}), ("adam_plain.pt", {"model": MODEL}), ("amsgrad.pt", {})],
)
def test_names_values_and_hyper_params_match_the_live_optimizer(name: str, options: dict) -> None:
    expected = TRUTH[name]["tensors"]
    states = list(_reader(name, **options).iter_tensors())
    assert [ts.name for ts in states] == list(expected)  # id order = the live optimizer's order
    for ts in states:
        assert_matches(ts, expected[ts.name])
    info = _reader(name, **options).describe()
    assert info.step == TRUTH[name]["step"] and info.n_tensors == len(expected)
    assert info.n_params == sum(t["numel"] for t in expected.values())


def test_amsgrad_streams_max_exp_avg_sq() -> None:
    states = list(_reader("amsgrad.pt").iter_tensors())
    assert all(ts.hp.amsgrad and ts.hp.decoupled_weight_decay for ts in states)
    raw = torch.load(FAMILY / "amsgrad.pt", weights_only=True)["state"][1]  # id 0: `unused`
    _, _, vmax = stream(states[0], 5)
    assert vmax is not None
    np.testing.assert_array_equal(vmax, raw["max_exp_avg_sq"].double().numpy())


@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
def test_chunk_size_does_not_change_the_data(chunk: int) -> None:
    ref = torch.load(FAMILY / "adam_names.pt", weights_only=True)["state"]
    states = list(_reader("adam_names.pt").iter_tensors())
    for pid, ts in zip(sorted(ref), states, strict=True):
        m, v, _ = stream(ts, chunk)
        np.testing.assert_array_equal(m, ref[pid]["exp_avg"].double().numpy())
        np.testing.assert_array_equal(v, ref[pid]["exp_avg_sq"].double().numpy())


def test_unstepped_parameter_keeps_its_id() -> None:
    # `unused` owns an id but has no state; the ids after it must still get the right names
    sd = load_lazy(FAMILY / "adam_plain.pt")
    assert len(sd["state"]) == sum(len(g["params"]) for g in sd["param_groups"]) - 1
    names = [ts.name for ts in _reader("adam_plain.pt", model=MODEL).iter_tensors()]
    assert "unused" not in names and names[0] == "fc1.weight" and names[-1] == "head.bias"


def test_without_names_or_model_ids_are_named_with_a_warning(caplog) -> None:  # noqa: ANN001
    with caplog.at_level(logging.WARNING):
        names = [ts.name for ts in _reader("adam_plain.pt").iter_tensors()]
    # `unused` is the root module's own parameter, so id 0 in parameters() order; never stepped
    assert names[0] == "param.1" and "param.0" not in names and names[-1] == "param.10"
    assert "param.<id>" in caplog.text


def test_model_with_the_wrong_tensor_count_raises_naming_error(tmp_path: Path) -> None:
    model = tmp_path / "other_model.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), model)
    with pytest.raises(NamingError, match="float tensors"):
        list(_reader("adam_plain.pt", model=model).iter_tensors())


def test_sgd_is_not_adam() -> None:
    with pytest.raises(NotAdamError) as err:
        list(_reader("sgd.pt").iter_tensors())
    assert str(FAMILY / "sgd.pt") in str(err.value)
    assert "SGD state (momentum_buffer)" in str(err.value)
    with pytest.raises(NotAdamError):
        _reader("sgd.pt").describe()


def _synthetic(step: object, **group: object) -> dict:
    g = torch.Generator().manual_seed(0)
    m, v = torch.randn(4, 3, generator=g), torch.rand(4, 3, generator=g)
    entry = {"step": step, "exp_avg": InMemoryTensor(m), "exp_avg_sq": InMemoryTensor(v)}
    base = {"params": [0, 1], "lr": 0.1, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.0}
    return {"state": {1: entry}, "param_groups": [{**base, **group}]}


@pytest.mark.parametrize("step", [12, 12.0, InMemoryTensor(torch.tensor(12.0))])
def test_step_may_be_int_float_or_0d_tensor(step: object) -> None:
    (ts,) = iter_adam_states(_synthetic(step), ["a", "b"], source="mem")
    assert ts.name == "b" and ts.step == 12.0 and ts.shape == (4, 3)


def test_group_flags_are_carried() -> None:
    sd = _synthetic(3, bias_correction=False, eps_inside_sqrt=True, maximize=True)
    (ts,) = iter_adam_states(sd, ["a", "b"], source="mem")
    assert not ts.hp.bias_correction and ts.hp.eps_inside_sqrt and ts.hp.maximize


def test_adafactor_and_empty_state_are_reported() -> None:
    sd = _synthetic(3)
    sd["state"][1] = {"step": 3, "exp_avg_sq_row": InMemoryTensor(torch.ones(4))}
    sd["state"][1]["exp_avg_sq_col"] = InMemoryTensor(torch.ones(3))
    with pytest.raises(NotAdamError, match=r"Adafactor \(exp_avg_sq_row/col\): not Adam"):
        list(iter_adam_states(sd, ["a", "b"], source="mem.pt"))
    sd["state"] = {}
    with pytest.raises(UnsupportedFormatError, match="no state"):
        list(iter_adam_states(sd, ["a", "b"], source="mem.pt"))


def test_names_must_cover_every_id() -> None:
    with pytest.raises(NamingError, match="1 names for 2"):
        list(iter_adam_states(_synthetic(3), ["a"], source="mem.pt"))
