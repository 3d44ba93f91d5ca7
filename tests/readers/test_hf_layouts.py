"""Layouts around the Trainer checkpoint, written by the real code (fixtures/make_hf_layouts.py):
a run folder with save_model()/save_state() at its root, BART's final_logits_bias buffer, and
Accelerate's save_state() folder (optimizer.bin beside model.safetensors), with `--model` given as
a folder or a .safetensors file.

References: fixtures/hf_layouts/truth.json, from the live optimizer at save time (names by
parameter identity, float64 numpy statistics); names must be exact or explicitly ambiguous
(`assert_never_wrong`), statistics equal to float64 rounding (rel 1e-12).
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import pytest
from _truth_helpers import FIXTURES, assert_never_wrong, load_truth

from adamscope.config import ReaderOptions
from adamscope.errors import NamingError
from adamscope.pipeline.discovery import discover
from adamscope.readers.hf_trainer import HFTrainerReader
from adamscope.readers.torch_optim import TorchOptimReader
from adamscope.vocab import TensorState

FAMILY = FIXTURES / "hf_layouts"
TRUTH = load_truth("hf_layouts")
ACCEL = FAMILY / "accelerate"


def _hide_transformers(monkeypatch: pytest.MonkeyPatch, transformers: bool) -> None:
    if not transformers:
        monkeypatch.setitem(sys.modules, "transformers", None)  # as on a machine without it


def _read(path: Path, **options) -> tuple[type, list[TensorState]]:
    (found,) = discover(path)
    reader = found.reader(found.path, options=ReaderOptions(**options))
    return found.reader, list(reader.iter_tensors())


def test_run_root_with_one_checkpoint_and_saved_model() -> None:
    # output_dir holds checkpoint-3/ and what save_model()/save_state() wrote: the checkpoint
    # is analysed, the root (no optimizer state) is not mistaken for one
    run = FAMILY / "run_root"
    (found,) = discover(run)
    assert found.path == run / "checkpoint-3" and found.reader is HFTrainerReader
    assert not HFTrainerReader.probe(run)
    _, states = _read(run)
    assert not assert_never_wrong(states, TRUTH["run_root/checkpoint-3"])


@pytest.mark.parametrize("transformers", [True, False], ids=["transformers", "without"])
def test_bart_final_logits_bias(transformers: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # final_logits_bias (1, 96) is a buffer in model.safetensors, not in the optimizer
    _hide_transformers(monkeypatch, transformers)
    _, states = _read(FAMILY / "bart" / "checkpoint-3")
    markers = assert_never_wrong(states, TRUTH["bart/checkpoint-3"])
    assert not markers if transformers else markers
    assert "model.final_logits_bias" not in {ts.name for ts in states}


@pytest.mark.parametrize("transformers", [True, False], ids=["transformers", "without"])
@pytest.mark.parametrize("model", [None, "step_3/model.safetensors", "step_3"])
def test_accelerate_save_state_named_from_the_model_file(
    model: str | None,
    transformers: bool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _hide_transformers(monkeypatch, transformers)
    with caplog.at_level(logging.WARNING):
        reader, states = _read(ACCEL, model=ACCEL / model if model else None)
    assert reader is TorchOptimReader
    markers = assert_never_wrong(states, TRUTH["accelerate/step_3"])
    # tied GPT-2 with run_clm_no_trainer's grouping: the h.0/h.1 blocks share every shape
    assert markers and not any(ts.name.startswith("param.") for ts in states)
    assert 'assuming no_decay = ["bias", "layer_norm.weight"]' in caplog.text
    assert "transformer.wte.weight" in {ts.name for ts in states}


def test_accelerate_with_the_model_config_is_exact() -> None:
    # --model <folder with config.json>: the model built on the meta device orders the names
    _, states = _read(ACCEL, model=ACCEL / "model")
    assert not assert_never_wrong(states, TRUTH["accelerate/step_3"])


def test_accelerate_model_config_without_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    # config.json cannot be used: the model.safetensors beside optimizer.bin still names them
    _hide_transformers(monkeypatch, False)
    _, states = _read(ACCEL, model=ACCEL / "model")
    assert assert_never_wrong(states, TRUTH["accelerate/step_3"])


def test_wrong_model_file_is_refused() -> None:
    other = FIXTURES / "hf_trainer" / "gpt2" / "checkpoint-10" / "model.safetensors"
    with pytest.raises(NamingError, match=r"optimizer\.bin: its 2 param groups fit none"):
        _read(ACCEL, model=other)


def test_unmatched_model_beside_falls_back_to_ids(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a model.safetensors that does not fit, found (not given): param.<id>, with the reason
    folder = tmp_path / "step_3"
    shutil.copytree(ACCEL / "step_3", folder)
    shutil.copy(FIXTURES / "hf_trainer" / "gpt2" / "checkpoint-10" / "model.safetensors", folder)
    with caplog.at_level(logging.WARNING):
        _, states = _read(folder / "optimizer.bin")
    assert states[0].name == "param.0" and "fit none of the known groupings" in caplog.text


@pytest.mark.parametrize("transformers", [True, False], ids=["transformers", "without"])
def test_trainer_model_option_as_safetensors_file(
    transformers: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # --model <model.safetensors> for a Trainer checkpoint whose own model file is gone
    folder = tmp_path / "checkpoint-3"
    shutil.copytree(FAMILY / "run_root" / "checkpoint-3", folder)
    (folder / "model.safetensors").unlink()
    (folder / "config.json").unlink()
    _hide_transformers(monkeypatch, transformers)
    model = FAMILY / "run_root" / "model.safetensors"
    reader = HFTrainerReader(folder, options=ReaderOptions(model=model))
    markers = assert_never_wrong(list(reader.iter_tensors()), TRUTH["run_root/checkpoint-3"])
    assert not markers if transformers else markers  # with transformers: the root's config.json
