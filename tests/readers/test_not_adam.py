"""Refusals that say what they saw (issue 17, item 7): an HF Trainer checkpoint whose optimizer is
not Adam gets the same "not Adam" line from `inspect` as from `analyze`, with or without
transformers, and SGD without momentum (which keeps no state) is "not Adam", not "never stepped".

Inputs: fixtures/hf_trainer/gpt2/checkpoint-10 with its optimizer.pt replaced by the state_dict of
a real torch.optim optimizer stepped over the checkpoint's own model weights, and the real
bitsandbytes Lion8bit state of fixtures/quantized.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from _truth_helpers import FIXTURES
from safetensors.torch import load_file

import adamscope
from adamscope.errors import NotAdamError, UnsupportedFormatError

CHECKPOINT = FIXTURES / "hf_trainer" / "gpt2" / "checkpoint-10"
OPTIMIZERS = {
    "sgd": (lambda ps: torch.optim.SGD(ps, lr=0.1), "SGD"),
    "sgd_momentum": (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), "SGD state"),
    "adagrad": (lambda ps: torch.optim.Adagrad(ps), "Adagrad"),
    "rmsprop": (lambda ps: torch.optim.RMSprop(ps), "RMSprop"),
    "adafactor": (lambda ps: torch.optim.Adafactor(ps), "Adafactor"),
}


def _checkpoint(tmp_path: Path, make: object) -> Path:
    folder = tmp_path / "checkpoint-10"
    shutil.copytree(CHECKPOINT, folder)
    params = [
        torch.nn.Parameter(t.float()) for t in load_file(folder / "model.safetensors").values()
    ]
    opt = make(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    return folder


def _messages(path: Path) -> tuple[str, str]:
    lines = []
    for call in (adamscope.inspect, adamscope.analyze):
        with pytest.raises(NotAdamError) as err:
            call(path)
        lines.append(str(err.value))
    return lines[0], lines[1]


@pytest.mark.parametrize("transformers", [True, False], ids=["transformers", "without"])
@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_inspect_and_analyze_say_not_adam(
    kind: str, transformers: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make, what = OPTIMIZERS[kind]
    folder = _checkpoint(tmp_path, make)
    if not transformers:
        monkeypatch.setitem(sys.modules, "transformers", None)  # as on a machine without it
    seen, analysed = _messages(folder)
    assert seen == analysed
    assert "optimizer.pt: not Adam/AdamW: " in seen and what in seen, seen
    assert "transformers" not in seen and "never stepped" not in seen


def test_bitsandbytes_one_moment_state_in_a_trainer_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "checkpoint-10"
    shutil.copytree(CHECKPOINT, folder)
    shutil.copy(FIXTURES / "quantized" / "bnb_lion8bit.pt", folder / "optimizer.pt")
    monkeypatch.setitem(sys.modules, "transformers", None)
    seen, analysed = _messages(folder)
    assert seen == analysed and "not Adam/AdamW: bitsandbytes state with one moment" in seen


def test_adam_that_never_stepped_is_still_never_stepped(tmp_path: Path) -> None:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))])
    torch.save(opt.state_dict(), tmp_path / "optim.pt")
    with pytest.raises(UnsupportedFormatError, match="never stepped"):
        adamscope.analyze(tmp_path / "optim.pt")


def test_an_unknown_torchao_subclass_is_named(tmp_path: Path) -> None:
    # a torchao tensor subclass outside the three optimizer states: refused naming torchao
    src = FIXTURES / "quantized" / "torchao_adamw8bit.pt"
    import zipfile

    bad = tmp_path / "ao.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(
                    b"subclass_8bit\nOptimState8bit", b"subclass_8bit\nOptimState2bit"
                )
            zout.writestr(info, data)
    with pytest.raises(
        adamscope.AdamscopeError, match=r"torchao\.optim\.subclass_8bit\.OptimState2bit"
    ):
        adamscope.inspect(bad)
