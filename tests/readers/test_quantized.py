"""Quantized Adam state (fixtures/make_quantized.py): bitsandbytes 8-bit AdamW / paged AdamW and
torchao AdamW8bit / AdamW4bit / AdamWFp8, read from their stored codes and scales.

References: fixtures/quantized/truth.json, the statistics of a float64 dequantization of the codes
the live optimizer held at save time (checked there against each library's own dequantize). The
reader dequantizes in float32 (qmap[code] * scale, as the libraries do), so every statistic must
agree to float32 rounding: rel 1e-5 of the value, or of its spread for means near 0. That is far
inside the quantization error itself (the 8-bit dynamic map's steps are ~1e-2 relative).
Neither library is installed where these tests run: reading needs none of their code.
"""

from __future__ import annotations

import math
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from _truth_helpers import FIXTURES, HP_KEYS, load_truth, stats, stream

import adamscope
from adamscope.config import ReaderOptions
from adamscope.errors import CorruptCheckpointError, NotAdamError, UnsafePickleError
from adamscope.readers.torch_optim import TorchOptimReader
from adamscope.readers.torchzip import load_lazy

FAMILY = FIXTURES / "quantized"
TRUTH = load_truth("quantized")
SPREAD = {"u_mean": "u_std", "r_mean": "r_std"}
STATS = ("u_mean", "u_std", "u_rms", "r_mean", "r_std", "r_rms", "suppression", "grad_rms")
STATS += ("m_norm", "v_l1", "frac_below_eps", "zero_v", "nonfinite")


def _states(name: str) -> list:
    return list(TorchOptimReader(FAMILY / name, options=ReaderOptions()).iter_tensors())


def _assert_close(got: dict, want: dict, name: str) -> None:
    for key in STATS:
        have, ref = got[key], want[key]
        tol = 1e-5 * (abs(ref) + (abs(want[SPREAD[key]]) if key in SPREAD else 0.0))
        assert math.isclose(have, ref, rel_tol=0, abs_tol=tol + 1e-300), (name, key, have, ref)


@pytest.mark.parametrize("name", sorted(TRUTH))
def test_statistics_match_a_float64_dequantization_of_the_saved_codes(name: str) -> None:
    expected = TRUTH[name]["tensors"]
    states = _states(name)
    assert [ts.name for ts in states] == list(expected)  # param_names of the live optimizer
    for ts in states:
        want = expected[ts.name]
        assert list(ts.shape) == want["shape"] and ts.step == want["step"]
        for key in HP_KEYS:
            assert getattr(ts.hp, key) == want[key], key
        assert (ts.dtype, ts.v_dtype or ts.dtype) == (want["m_dtype"], want["v_dtype"])
        _assert_close(stats(ts, 37), want, ts.name)
    info = TorchOptimReader(FAMILY / name, options=ReaderOptions()).describe()
    assert info.step == TRUTH[name]["step"] and info.n_tensors == len(expected)
    assert info.n_params == sum(t["numel"] for t in expected.values())
    assert not {"torchao", "bitsandbytes"} & set(sys.modules)


@pytest.mark.parametrize(
    "name",
    ["torchao_adamw4bit.pt", "torchao_adamw8bit.pt", "torchao_adamwfp8.pt", "bnb_adamw8bit.pt"],
)
def test_chunk_boundaries_do_not_change_the_values(name: str) -> None:
    # odd chunk sizes start inside blocks and (4-bit) inside a byte's pair of codes
    ts = next(t for t in _states(name) if t.dtype != "float32")
    ref_m, ref_v, _ = stream(ts, 1 << 20)
    for chunk in (1, 3, 255, 257, 1000):
        m, v, _ = stream(ts, chunk)
        np.testing.assert_array_equal(m, ref_m)
        np.testing.assert_array_equal(v, ref_v)


def test_analyze_records_the_quantized_dtypes() -> None:
    tables = adamscope.analyze(FAMILY / "torchao_adamw4bit.pt")
    rows = {r["tensor"]: r for r in tables.tensors.iter_rows(named=True)}
    assert rows["fc1.weight"]["dtype"] == rows["fc1.weight"]["v_dtype"] == "torchao-4bit-b128"
    assert rows["fc3.weight"]["dtype"] == rows["fc3.weight"]["v_dtype"] == "float32"
    want = TRUTH["torchao_adamw4bit.pt"]["tensors"]["fc1.weight"]
    _assert_close(rows["fc1.weight"], want, "fc1.weight")


def test_bitsandbytes_flat_layout_before_0_49_2(tmp_path: Path) -> None:
    # bitsandbytes < 0.49.2 kept state1/qmap1/absmax1/... in the entry itself
    sd = torch.load(FAMILY / "bnb_adamw8bit.pt", weights_only=True)
    for entry in sd["state"].values():
        entry.update(entry.pop("__bnb_optimizer_quant_state__"))
    torch.save(sd, tmp_path / "flat.pt")
    flat = list(TorchOptimReader(tmp_path / "flat.pt", options=ReaderOptions()).iter_tensors())
    for a, b in zip(flat, _states("bnb_adamw8bit.pt"), strict=True):
        assert (a.name, a.dtype) == (b.name, b.dtype)
        np.testing.assert_array_equal(stream(a, 100)[1], stream(b, 100)[1])


def test_bitsandbytes_one_moment_state_is_not_adam() -> None:
    with pytest.raises(NotAdamError, match=r"bnb_lion8bit\.pt: not Adam/AdamW: bitsandbytes"):
        _states("bnb_lion8bit.pt")


def _retitle(src: Path, dst: Path, edit: callable) -> Path:
    """A copy of a torch zip whose data.pkl went through `edit(bytes) -> bytes`."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, edit(data) if info.filename.endswith("data.pkl") else data)
    return dst


def test_bad_block_scales_are_one_line_corrupt(tmp_path: Path) -> None:
    # scale storage '2' of fc1's exp_avg claims 31 blocks instead of 32 (8192 = 32 x 256)
    def edit(data: bytes) -> bytes:
        i = data.index(b"X\x05\x00\x00\x00scale")
        j = data.index(b"K\x20\x85", i)  # BININT1 32, TUPLE1: the scale's size
        return data[:j] + b"K\x1f\x85" + data[j + 3 :]

    bad = _retitle(FAMILY / "torchao_adamw8bit.pt", tmp_path / "bad.pt", edit)
    with pytest.raises(CorruptCheckpointError, match=r"bad\.pt: OptimState8bit.* block scales"):
        load_lazy(bad)


def test_only_torchao_state_subclasses_are_rebuilt(tmp_path: Path) -> None:
    # the same file naming another wrapper subclass: refused by name, nothing imported
    other = b"torchao.dtypes.affine_quantized_tensor\nAffineQuantizedTensor\n"

    def edit(data: bytes) -> bytes:
        return data.replace(b"torchao.optim.subclass_8bit\nOptimState8bit\n", other)

    bad = _retitle(FAMILY / "torchao_adamw8bit.pt", tmp_path / "other.pt", edit)
    with pytest.raises(UnsafePickleError, match="AffineQuantizedTensor"):
        load_lazy(bad)
    assert "torchao" not in sys.modules


def test_quantized_state_cannot_be_overwritten_by_the_pickle() -> None:
    tree = load_lazy(FAMILY / "torchao_adamwfp8.pt")
    m = tree["state"][0]["exp_avg"]
    with pytest.raises(pickle.UnpicklingError):
        m.__setstate__({"codes": None})
