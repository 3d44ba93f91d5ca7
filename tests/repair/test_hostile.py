"""A hostile or truncated input: repair fails with the one-line error analyze gives for the same
file, runs nothing from it, and writes nothing (no output, no temporary folder left)."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import torch

import adamscope
from adamscope.repair import repair

from ._make import listing

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
# family -> (the checkpoint to place, the file inside it to break)
CASES = {
    "torch": ("torch/adam_names.pt", "adam_names.pt"),
    "nanogpt": ("nanogpt/compiled/ckpt.pt", "ckpt.pt"),
    "hf_trainer": ("hf_trainer/gpt2/checkpoint-10", "optimizer.pt"),
    "dcp": ("dcp/fsdp2", "__0_0.distcp"),
    "deepspeed": ("deepspeed/zero2_w2_fp32", "global_step5/zero_pp_rank_1_mp_rank_00_optim_states.pt"),
}  # fmt: skip


def _place(family: str, tmp: Path) -> tuple[Path, Path]:
    src, inner = CASES[family]
    dst = tmp / "in" / Path(src).name
    dst.parent.mkdir()
    if (FIXTURES / src).is_dir():
        shutil.copytree(FIXTURES / src, dst)
        return dst, dst / inner
    shutil.copyfile(FIXTURES / src, dst)
    return dst, dst


def _errors(path: Path, out: Path) -> tuple[str, str]:
    with pytest.raises(adamscope.AdamscopeError) as analyzed:
        adamscope.analyze(path, gradients=False)
    with pytest.raises(adamscope.AdamscopeError) as repaired:
        repair(path, out, reset_layers="head", eps=1e-9)
    return str(analyzed.value), str(repaired.value)


@pytest.mark.parametrize("family", sorted(CASES))
def test_truncated_input(family: str, tmp_path: Path) -> None:
    path, victim = _place(family, tmp_path)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) * 2 // 3])
    before = listing(tmp_path)
    analyzed, repaired = _errors(path, tmp_path / "out")
    assert repaired == analyzed and "\n" not in repaired and str(victim.parent) in repaired
    assert listing(tmp_path) == before


class _Payload:
    """Pickles as a call of os.system: what a malicious checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_a_foreign_global(tmp_path: Path) -> None:
    sd = torch.load(FIXTURES / "torch" / "adam_names.pt", weights_only=True)
    sd["param_groups"][0]["hook"] = _Payload(tmp_path / "pwned")
    path = tmp_path / "in" / "optim.pt"
    path.parent.mkdir()
    torch.save(sd, path)
    before = listing(tmp_path)
    analyzed, repaired = _errors(path, tmp_path / "out")
    assert repaired == analyzed and "refusing to load global" in repaired
    assert listing(tmp_path) == before and not (tmp_path / "pwned").exists()


def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from adamscope.cli import app

    path, victim = _place("nanogpt", tmp_path)
    with zipfile.ZipFile(victim) as zf:
        n = len(zf.namelist())
    victim.write_bytes(victim.read_bytes()[:1000])
    result = CliRunner().invoke(app, ["repair", str(path), "-o", str(tmp_path / "out"),
                                      "--reset-layers", "head"])  # fmt: skip
    assert result.exit_code == 2 and n > 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adamscope: error:") and "truncated" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("src", ["mlx/adam_fp32.safetensors", "deepspeed/universal_zero2"])
def test_other_formats_are_refused_in_one_line(src: str, tmp_path: Path) -> None:
    with pytest.raises(adamscope.AdamscopeError) as err:
        repair(FIXTURES / src, tmp_path / "out", reset_layers="head")
    message = str(err.value)
    assert "repair writes torch-optim, nanogpt, lightning, hf-trainer, dcp, deepspeed" in message
    assert "\n" not in message and src.split("/")[-1] in message
    assert listing(tmp_path) == []


def test_a_run_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(adamscope.AdamscopeError, match="a run folder of 3 checkpoints"):
        repair(FIXTURES / "lightning", tmp_path / "out", reset_layers="head")
    assert listing(tmp_path) == []
