"""Format detection over the committed fixtures and the 'unsupported' message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _truth_helpers import FIXTURES

from adamscope.errors import UnsupportedFormatError
from adamscope.readers import open_checkpoint
from adamscope.readers.registry import detect


@pytest.mark.parametrize(
    ("path", "reader"),
    [
        ("torch/adam_names.pt", "torch-optim"),
        ("torch/sgd.pt", "torch-optim"),
        ("nanogpt/compiled/ckpt.pt", "nanogpt"),
        ("nanogpt/mask_buffer/ckpt.pt", "nanogpt"),
        ("lightning/epoch=0-step=3.ckpt", "lightning"),
    ],
)
def test_fixtures_are_detected(path: str, reader: str) -> None:
    assert detect(FIXTURES / path).name == reader
    assert open_checkpoint(FIXTURES / path).name == reader


def test_a_model_state_dict_is_not_a_checkpoint_and_the_message_says_what_was_found() -> None:
    with pytest.raises(UnsupportedFormatError) as err:
        detect(FIXTURES / "torch" / "model_state.pt")
    assert "model state_dict of 14 tensors and no optimizer state" in str(err.value)


def test_unknown_files_and_folders(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UnsupportedFormatError, match="starting with b'hi'"):
        detect(tmp_path / "notes.txt")
    with pytest.raises(UnsupportedFormatError, match="a folder holding notes.txt"):
        detect(tmp_path)
    with pytest.raises(UnsupportedFormatError, match="no such file"):
        detect(tmp_path / "missing.pt")


def test_legacy_file_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save({"w": torch.ones(1)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsupportedFormatError, match="legacy"):
        detect(path)
