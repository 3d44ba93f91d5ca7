"""MLX optimizer state in safetensors (fixtures/make_mlx.py, written by real mlx 0.32 on CPU).

References: fixtures/mlx/truth.json from the live MLX optimizer state (float64 numpy statistics via
fixtures/truth.py, with the betas/eps/bias correction each run used); flat-range slicing is checked
against numpy indexing of the same array.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _truth_helpers import FIXTURES, load_truth, stats, stream_rss
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from adamscope.config import ReaderOptions
from adamscope.errors import NotAdamError, UnsupportedFormatError
from adamscope.readers.safetensors_io import flat_slices
from adamscope.readers.safetensors_optim import SafetensorsOptimReader

FAMILY = FIXTURES / "mlx"
TRUTH = load_truth("mlx")
# what each run used (fixtures/make_mlx.py); None = rely on the reader's MLX defaults
RUN_OPTIONS = {
    "adam_fp32.safetensors": ReaderOptions(),
    "adam_bf16.safetensors": ReaderOptions(),
    "adamw_bc.safetensors": ReaderOptions(beta1=0.9, beta2=0.95, eps=1e-6, bias_correction=True),
}


@pytest.mark.parametrize("rel", sorted(RUN_OPTIONS))
def test_values_match_the_live_mlx_optimizer(rel: str) -> None:
    expected = TRUTH[rel]["tensors"]
    reader = SafetensorsOptimReader(FAMILY / rel, options=RUN_OPTIONS[rel])
    states = list(reader.iter_tensors())
    assert sorted(ts.name for ts in states) == sorted(expected)
    for ts in states:
        want = expected[ts.name]
        assert list(ts.shape) == want["shape"] and ts.numel == want["numel"]
        assert ts.step == want["step"] == 5.0
        assert (ts.hp.beta1, ts.hp.beta2, ts.hp.eps) == (want["beta1"], want["beta2"], want["eps"])
        assert ts.hp.lr == pytest.approx(want["lr"], rel=1e-7)  # stored as float32
        got = stats(ts, chunk=7)
        for key in ("u_mean", "u_std", "u_rms", "r_std", "suppression", "grad_rms", "v_l1"):
            assert math.isclose(got[key], want[key], rel_tol=1e-9), (rel, ts.name, key)
        assert got["zero_v"] == want["zero_v"]
    info = reader.describe()
    assert info.step == 5 and info.n_tensors == len(expected)
    assert info.n_params == sum(t["numel"] for t in expected.values())


def test_defaults_are_mlx_without_bias_correction_and_say_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        states = list(
            SafetensorsOptimReader(
                FAMILY / "adam_fp32.safetensors", options=ReaderOptions()
            ).iter_tensors()
        )
    hp = states[0].hp
    assert (hp.beta1, hp.beta2, hp.eps, hp.bias_correction) == (0.9, 0.999, 1e-8, False)
    assert "MLX's defaults" in caplog.text and "bias_correction=False" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        list(
            SafetensorsOptimReader(
                FAMILY / "adamw_bc.safetensors", options=RUN_OPTIONS["adamw_bc.safetensors"]
            ).iter_tensors()
        )
    assert caplog.text == ""


def test_bf16_state_streams_in_its_dtype() -> None:
    ts = next(
        SafetensorsOptimReader(
            FAMILY / "adam_bf16.safetensors", options=ReaderOptions()
        ).iter_tensors()
    )
    assert ts.dtype == "bfloat16"
    _, m, _, _ = next(ts.chunks(5))
    assert m.dtype == torch.bfloat16


def test_probe_and_refusals(tmp_path: Path) -> None:
    assert SafetensorsOptimReader.probe(FAMILY / "adam_fp32.safetensors")
    model = tmp_path / "model.safetensors"
    save_file({"layers.0.weight": torch.ones(2, 2)}, str(model))
    assert not SafetensorsOptimReader.probe(model)
    with pytest.raises(UnsupportedFormatError, match="model file"):
        SafetensorsOptimReader(model, options=ReaderOptions())
    assert SafetensorsOptimReader.probe(FAMILY / "sgd_momentum.safetensors")
    with pytest.raises(NotAdamError, match="sgd_momentum.safetensors.*'v'"):
        SafetensorsOptimReader(FAMILY / "sgd_momentum.safetensors", options=ReaderOptions())
    assert not SafetensorsOptimReader.probe(FAMILY / "truth.json")


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
    data=st.data(),
)
def test_flat_slices_cover_any_flat_range_in_order(
    shape: tuple[int, ...], data: st.DataObject
) -> None:
    n = math.prod(shape)
    a = data.draw(st.integers(0, n))
    b = data.draw(st.integers(a, n))
    x = np.arange(n).reshape(shape)
    pieces = [x[idx].reshape(-1) for idx in flat_slices(shape, a, b)]
    got = np.concatenate(pieces) if pieces else np.empty(0, dtype=x.dtype)
    np.testing.assert_array_equal(got, np.arange(a, b))
    assert len(pieces) <= 2 * len(shape) + 1  # a few boxes, never one per element


def test_streaming_a_large_tensor_keeps_memory_bounded(tmp_path: Path) -> None:
    path = tmp_path / "optimizer.safetensors"
    rows, cols = 2049, 2047  # 4.2M float32 each for m and v: 33 MB of state
    save_file(
        {
            "step": torch.tensor(3, dtype=torch.uint64),
            "w.m": torch.ones(rows, cols),
            "w.v": torch.full((rows, cols), 2.0),
        },
        str(path),
    )
    result = stream_rss(SafetensorsOptimReader, path)
    assert result["n"] == rows * cols
    assert result["m_total"] + result["v_total"] == 3.0 * (
        rows * cols - (1 << 16)
    )  # every chunk after the first
    assert result["growth_kb"] < 8 * 1024, result  # a few 256 KiB chunks, not 33 MB
