"""Files that are not what their names say: a FIFO (opening it blocks forever) or a sparse file of
gigabytes (no disk space, endless zeros) where a checkpoint has a `.distcp`, a DeepSpeed rank file,
`latest`, trainer_state.json, model.safetensors(.index.json) or the checkpoint file itself. Each is
refused by the one check in readers/guard.py, before it is opened or read: one line naming the file,
exit 2, within seconds and without reading the gigabytes."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from _hostile_helpers import FIXTURES, bounded, cli, error_lines, fifo, sparse

GB = 1 << 30
DS = FIXTURES / "deepspeed" / "zero2_w2_fp32"
DCP = FIXTURES / "dcp" / "fsdp2"
HF = FIXTURES / "hf_trainer" / "gpt2" / "checkpoint-10"


def _fifo(p: Path) -> None:
    p.unlink()
    fifo(p)


def _sparse(p: Path) -> None:
    p.unlink()
    sparse(p, 8 * GB, head=b"global_step5" if p.name == "latest" else b'{"a": [')


def _hf_by_shapes(root: Path) -> Path:
    """An HF checkpoint named from model.safetensors: no config.json to build the model from."""
    (root / "config.json").unlink()
    return root


# case -> (fixture folder, file inside it to replace, how, command, words of the error)
CASES: dict[str, tuple[Path, str, Callable[[Path], None], str, tuple[str, ...]]] = {
    "distcp_fifo": (DCP, "__1_0.distcp", _fifo, "analyze", ("__1_0.distcp", "FIFO")),
    "rank_file_fifo": (
        DS,
        "tag/zero_pp_rank_1_mp_rank_00_optim_states.pt",
        _fifo,
        "analyze",
        ("zero_pp_rank_1", "FIFO"),
    ),
    "latest_fifo": (DS, "latest", _fifo, "analyze", ("latest", "FIFO")),
    "latest_sparse": (DS, "latest", _sparse, "inspect", ("latest", "more than")),
    "trainer_state_fifo": (HF, "trainer_state.json", _fifo, "inspect", ("trainer_state", "FIFO")),
    "trainer_state_sparse": (
        HF,
        "trainer_state.json",
        _sparse,
        "inspect",
        ("trainer_state.json", "more than"),
    ),
    "model_safetensors_fifo": (
        HF,
        "model.safetensors",
        _fifo,
        "inspect",
        ("model.safetensors", "FIFO"),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_special_file_in_a_checkpoint_is_one_line(case: str, tmp_path: Path) -> None:
    src, inner, make, command, words = CASES[case]
    root = tmp_path / src.name
    shutil.copytree(src, root)
    if src == HF and command == "inspect" and inner.startswith("model"):
        _hf_by_shapes(root)
    if src == DS:  # a tag that is no step folder name: only `latest` leads to it
        (root / "global_step5").rename(root / "tag")
        (root / "latest").write_text("tag")
    make(root / inner)
    args = ["-o", tmp_path / "out", "-q"] if command == "analyze" else []
    with bounded(30, megabytes=400):  # imports (transformers) included; the files hold 8 GB
        rc, err = cli(command, root, *args)
    assert rc == 2, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize("how", ["fifo", "sparse"])
def test_safetensors_index_that_is_special_is_refused(how: str, tmp_path: Path) -> None:
    import safetensors.torch

    root = tmp_path / "checkpoint-10"
    shutil.copytree(HF, root)
    _hf_by_shapes(root)
    weights = safetensors.torch.load_file(root / "model.safetensors")
    (root / "model.safetensors").unlink()
    safetensors.torch.save_file(weights, root / "model-00001-of-00001.safetensors")
    index = root / "model.safetensors.index.json"
    if how == "fifo":
        fifo(index)
    else:
        sparse(index, 8 * GB, head=b'{"weight_map": {')
    with bounded(30, megabytes=400):  # imports (transformers) included; the files hold 8 GB
        rc, err = cli("inspect", root)
    assert rc == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and "model.safetensors.index.json" in lines[0], err


def test_a_broken_latest_beside_step_folders_is_named_and_the_folders_analysed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "ds"
    shutil.copytree(DS, root)
    _fifo(root / "latest")
    with bounded(60):
        rc, err = cli("analyze", root, "-o", tmp_path / "out", "-q")
    assert rc == 0, err
    assert any("latest" in r.getMessage() and "FIFO" in r.getMessage() for r in caplog.records)


def test_checkpoint_path_that_is_a_fifo(tmp_path: Path) -> None:
    with bounded(20):
        rc, err = cli("analyze", fifo(tmp_path / "ckpt.pt"), "-o", tmp_path / "out", "-q")
    assert rc == 2 and "FIFO" in error_lines(err)[0], err
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(FIXTURES / "torch" / "adam_names.pt", run / "step_1.pt")
    fifo(run / "step_2.pt")
    with bounded(60):
        rc, err = cli("analyze", run, "-o", tmp_path / "out2", "-q", "--keep-going")
    assert rc == 1, err  # step_1 analysed, step_2 listed among the failures
    assert "failed:" in err and "step_2.pt: is a FIFO" in err, err


def test_sparse_safetensors_header_over_the_format_limit(tmp_path: Path) -> None:
    from adamscope.readers.guard import SAFETENSORS_HEADER_BYTES

    n = SAFETENSORS_HEADER_BYTES + 1
    path = sparse(tmp_path / "opt.safetensors", 8 + n + 16, head=n.to_bytes(8, "little") + b"{")
    with bounded(10, megabytes=50):
        rc, err = cli("analyze", path, "-o", tmp_path / "out", "-q")
    assert rc == 2 and "over the format's limit" in error_lines(err)[0], err
