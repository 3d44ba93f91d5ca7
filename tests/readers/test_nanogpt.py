"""nanoGPT-style ckpt.pt files (fixtures/make_nanogpt.py): names recovered from the model state_dict
through nanoGPT's dim-split groups, `_orig_mod.` stripped, tied lm_head skipped, buffers skipped.

References: fixtures/nanogpt/truth.json from the live optimizer (names via the uncompiled model's
named_parameters() identity).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _truth_helpers import FIXTURES, assert_matches, load_truth

from adamscope.config import ReaderOptions
from adamscope.errors import NamingError
from adamscope.readers.nanogpt import NanoGPTReader

FAMILY = FIXTURES / "nanogpt"
TRUTH = load_truth("nanogpt")


@pytest.mark.parametrize("ckpt", sorted(TRUTH))
def test_names_and_values_match_the_live_optimizer(ckpt: str) -> None:
    expected = TRUTH[ckpt]["tensors"]
    reader = NanoGPTReader(FAMILY / ckpt, options=ReaderOptions())
    states = list(reader.iter_tensors())
    assert sorted(ts.name for ts in states) == sorted(expected)
    assert not any("_orig_mod" in ts.name or ts.name == "lm_head.weight" for ts in states)
    for ts in states:
        assert_matches(ts, expected[ts.name])
    info = reader.describe()
    assert info.step == TRUTH[ckpt]["step"] and info.n_tensors == len(expected)


def test_compiled_checkpoint_really_has_the_prefix() -> None:
    raw = torch.load(FAMILY / "compiled" / "ckpt.pt", weights_only=True)
    assert all(k.startswith("_orig_mod.") for k in raw["model"])


def test_tensors_come_in_model_order() -> None:
    reader = NanoGPTReader(FAMILY / "compiled" / "ckpt.pt", options=ReaderOptions())
    names = [ts.name for ts in reader.iter_tensors()]
    assert names[:3] == [
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.0.ln_1.weight",
    ]
    assert names[-1] == "transformer.ln_f.bias"


def test_model_that_does_not_fit_raises_naming_error(tmp_path: Path) -> None:
    ckpt = torch.load(FAMILY / "compiled" / "ckpt.pt", weights_only=True)
    # drop one 1-D parameter from the model: the optimizer's group 1 no longer fits
    del ckpt["model"]["_orig_mod.transformer.ln_f.bias"]
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    with pytest.raises(NamingError, match=str(path)):
        list(NanoGPTReader(path, options=ReaderOptions()).iter_tensors())
