"""Broken input: one line naming the file and the problem, exit code 2 — made by mutating real
fixtures in tmp_path (truncated zip/pickle/storage, empty files, missing shards and ranks, shapes
that disagree, optimizers that are not Adam), plus NaN/Inf and v == 0 counted, not fatal."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from _hostile_helpers import (
    FIXTURES,
    TORCH_FILES,
    cli,
    error_lines,
    place,
    rezip,
    storages,
    zip_entry,
)

from adamscope.errors import AdamscopeError, CorruptCheckpointError, NotAdamError


def _one_error(path: Path, tmp: Path, *words: str, code: int = 2) -> str:
    rc, err = cli("analyze", path, "-o", tmp / "out", "-q")
    assert rc == code, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    line = lines[0]
    for w in words:
        assert w in line, line
    return line


@pytest.mark.parametrize("family", sorted(TORCH_FILES))
@pytest.mark.parametrize("keep", [0.0, 0.02, 0.5, 0.999])
def test_truncated_torch_file(family: str, keep: float, tmp_path: Path) -> None:
    path, target = place(family, tmp_path)
    data = target.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    expect = "empty file" if keep == 0 else "truncated"
    _one_error(path, tmp_path, str(target), expect)


@pytest.mark.parametrize("family", sorted(TORCH_FILES))
def test_truncated_pickle_inside_a_whole_zip(family: str, tmp_path: Path) -> None:
    path, target = place(family, tmp_path)
    pkl = zip_entry(target, "data.pkl")
    rezip(TORCH_FILES[family], target, replace={"data.pkl": pkl[: len(pkl) // 2]})
    line = _one_error(path, tmp_path, str(target), "data.pkl")
    assert "cannot unpickle data.pkl" in line or "the pickle is truncated" in line, line


@pytest.mark.parametrize("family", sorted(TORCH_FILES))
def test_truncated_and_missing_tensor_storage(family: str, tmp_path: Path) -> None:
    path, target = place(family, tmp_path)
    names = storages(target)
    rezip(TORCH_FILES[family], target, replace={n: zip_entry(target, n)[:3] for n in names})
    _one_error(path, tmp_path, str(target), "shorter than its tensor")
    rezip(TORCH_FILES[family], target, replace=dict.fromkeys(names))
    _one_error(path, tmp_path, str(target), "is missing")


def test_empty_and_foreign_files_and_folders(tmp_path: Path) -> None:
    (tmp_path / "empty.ckpt").write_bytes(b"")
    _one_error(tmp_path / "empty.ckpt", tmp_path, "empty.ckpt", "empty file (0 bytes)")
    (tmp_path / "notes.txt").write_bytes(b"")
    _one_error(tmp_path / "notes.txt", tmp_path, "notes.txt", "empty file")
    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 4)
    _one_error(tmp_path / "random.pt", tmp_path, "random.pt", "no reader recognises it")
    nothing = tmp_path / "run"
    (nothing / "logs").mkdir(parents=True)
    (nothing / "README").write_text("hello")
    _one_error(nothing, tmp_path, str(nothing), "no checkpoint found")
    _one_error(tmp_path / "absent", tmp_path, "absent", "no such file or directory")


def _adam_sd(n: int = 6, **values: torch.Tensor) -> dict:
    w = torch.nn.Parameter(torch.randn(n, generator=torch.Generator().manual_seed(0)))
    opt = torch.optim.Adam([w], lr=1e-3)
    w.square().sum().backward()
    opt.step()
    sd = opt.state_dict()
    sd["state"][0].update(values)
    return sd


def test_m_and_v_shapes_disagree(tmp_path: Path) -> None:
    path = tmp_path / "mv.pt"
    torch.save(_adam_sd(6, exp_avg_sq=torch.ones(2, 3)), path)
    _one_error(path, tmp_path, str(path), "exp_avg (6,) and exp_avg_sq (2, 3) differ")


def test_amsgrad_vmax_shape_disagrees(tmp_path: Path) -> None:
    sd = _adam_sd(6, max_exp_avg_sq=torch.ones(5))
    sd["param_groups"][0]["amsgrad"] = True
    path = tmp_path / "vmax.pt"
    torch.save(sd, path)
    _one_error(path, tmp_path, str(path), "max_exp_avg_sq (5,)")


@pytest.mark.parametrize(
    "v",
    [[1.0, 2, -3, 4, 5, 6], [float("nan"), 2, -3, 4, 5, 6]],  # a NaN must not hide the negative
    ids=["negative", "negative-after-nan"],
)
def test_negative_v_is_corrupt(tmp_path: Path, v: list[float]) -> None:
    path = tmp_path / "neg.pt"
    torch.save(_adam_sd(6, exp_avg_sq=torch.tensor(v)), path)
    _one_error(path, tmp_path, str(path), "exp_avg_sq has negative entries")


@pytest.mark.parametrize("bad", ["exp_avg_sq", "max_exp_avg_sq"])
def test_amsgrad_negative_moments_are_corrupt(tmp_path: Path, bad: str) -> None:
    """With amsgrad both second moments are read (exp_avg_sq in the sums, max_exp_avg_sq in u):
    a negative entry in either is refused, naming which."""
    good, neg = torch.ones(6), torch.tensor([1.0, 2, -3, 4, 5, 6])
    sd = _adam_sd(6, exp_avg_sq=neg if bad == "exp_avg_sq" else good,
                  max_exp_avg_sq=neg if bad == "max_exp_avg_sq" else good)  # fmt: skip
    sd["param_groups"][0]["amsgrad"] = True
    path = tmp_path / "ams.pt"
    torch.save(sd, path)
    _one_error(path, tmp_path, str(path), f"'param.0' {bad} has negative entries")


@pytest.mark.parametrize("kernel", ["numba", "torch"])
def test_negative_v_refused_by_the_engine_whatever_the_reader(
    tmp_path: Path, kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DCP folder (its reader does not look at values) with a negative exp_avg_sq entry deep in
    a chunk: the engine refuses it in one line naming the folder, on both kernel paths (the torch
    path used to crash in bincount, the numba one to count NaNs as if the state were fine)."""
    import torch.distributed.checkpoint as dcp

    if kernel == "numba":
        from adamscope.stats import fused

        if not fused.available():
            pytest.skip("numba is not available")
    monkeypatch.setenv("ADAMSCOPE_KERNEL", kernel)
    p = torch.nn.Parameter(torch.randn(64, 32))
    opt = torch.optim.AdamW([p], lr=1e-3)
    p.grad = torch.randn_like(p)
    opt.step()
    state = opt.state_dict()
    state["state"][0]["exp_avg_sq"].view(-1)[1500] = -1e-6
    folder = tmp_path / "dcp"
    dcp.save(
        {
            "optimizer": {
                "state": {"w": state["state"][0]},
                "param_groups": [{**state["param_groups"][0], "params": ["w"]}],
            }
        },
        checkpoint_id=str(folder),
    )
    line = _one_error(folder, tmp_path, str(folder), "'w' exp_avg_sq has negative entries")
    assert "element 1500" in line or "element 0" in line, line
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_model_shapes_that_do_not_add_up(tmp_path: Path) -> None:
    """nanoGPT: the model state_dict saved beside the optimizer no longer matches its shapes."""
    tree = torch.load(TORCH_FILES["nanogpt"], weights_only=True)
    key = next(k for k, v in tree["model"].items() if v.ndim == 2)
    tree["model"][key] = torch.zeros(3, 7)
    path = tmp_path / "ckpt.pt"
    torch.save(tree, path)
    _one_error(path, tmp_path, str(path), "do not match the model")


def _analyze_with(reader: type, path: Path) -> None:
    """What analyze does with a checkpoint of a family the registry does not detect (yet)."""
    from adamscope.config import AnalyzeOptions, StatsConfig
    from adamscope.pipeline.discovery import Found
    from adamscope.pipeline.run import analyze_checkpoint

    opts = AnalyzeOptions(stats=StatsConfig(device="cpu", dip_sample=1024))
    analyze_checkpoint(Found(path, None, reader), rel=".", options=opts)


def test_dcp_folder_missing_a_distcp(tmp_path: Path) -> None:
    from adamscope.readers.dcp import DCPReader

    folder = tmp_path / "fsdp2"
    shutil.copytree(FIXTURES / "dcp" / "fsdp2", folder)
    (folder / "__1_0.distcp").unlink()
    with pytest.raises(AdamscopeError) as err:
        _analyze_with(DCPReader, folder)
    assert "__1_0.distcp" in str(err.value) and "\n" not in str(err.value)


def test_zero_folder_with_a_rank_missing(tmp_path: Path) -> None:
    from adamscope.readers.deepspeed import DeepSpeedReader

    folder = tmp_path / "zero2"
    shutil.copytree(FIXTURES / "deepspeed" / "zero2_w2_fp32", folder)
    (folder / "global_step5" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(AdamscopeError) as err:
        _analyze_with(DeepSpeedReader, folder)
    assert str(folder) in str(err.value) and "\n" not in str(err.value)


# --- not Adam -----------------------------------------------------------------------------------
def _stepped(cls: type, **kw: object) -> dict:
    model = torch.nn.Linear(4, 3)
    opt = cls(model.parameters(), lr=1e-2, **kw)
    for _ in range(2):
        model(torch.ones(2, 4)).square().sum().backward()
        opt.step()
    return opt.state_dict()


@pytest.mark.parametrize(
    ("cls", "kw", "what"),
    [
        (torch.optim.NAdam, {}, "NAdam"),
        (torch.optim.NAdam, {"decoupled_weight_decay": True}, "NAdam"),
        (torch.optim.RAdam, {}, "RAdam"),
        (torch.optim.Adamax, {}, "Adamax"),
        (torch.optim.Adagrad, {}, "Adagrad"),
        (torch.optim.RMSprop, {}, "RMSprop"),
        (torch.optim.SGD, {"momentum": 0.9}, "SGD"),
    ],
)
def test_not_adam_is_refused_with_what_it_is(
    cls: type, kw: dict, what: str, tmp_path: Path
) -> None:
    path = tmp_path / f"{what}.pt"
    torch.save(_stepped(cls, **kw), path)
    line = _one_error(path, tmp_path, str(path), f"not Adam/AdamW: {what}")
    assert line.count(str(path)) == 1


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_adam_and_adamw_are_not_mistaken_for_radam(cls: type, tmp_path: Path) -> None:
    path = tmp_path / "adam.pt"
    torch.save(_stepped(cls), path)
    rc, err = cli("analyze", path, "-o", tmp_path / "out", "-q")
    assert rc == 0, err


def test_radam_without_torch_group_markers_cannot_be_told_apart() -> None:
    """Documented limit (docs/security.md): stripped of torch.optim's group keys, RAdam's state is
    Adam's state; it is read as Adam."""
    from adamscope.readers.optim_state import check_adam

    sd = _stepped(torch.optim.RAdam)
    with pytest.raises(NotAdamError, match="RAdam"):
        check_adam(sd, source="r.pt")
    for g in sd["param_groups"]:
        for k in ("foreach", "differentiable", "capturable"):
            g.pop(k)
    check_adam(sd, source="r.pt")  # no error: indistinguishable


def test_lightning_with_nadam_only(tmp_path: Path) -> None:
    tree = torch.load(TORCH_FILES["lightning"], weights_only=True)
    model = torch.nn.Linear(4, 3)
    tree["state_dict"] = dict(model.state_dict())
    tree["optimizer_states"] = [_stepped(torch.optim.NAdam)]
    path = tmp_path / "epoch=0-step=3.ckpt"
    torch.save(tree, path)
    _one_error(path, tmp_path, str(path), "not Adam/AdamW: NAdam")


# --- values that are not errors -----------------------------------------------------------------
def test_nonfinite_and_zero_v_are_counted(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    m = torch.randn(4000, generator=g)
    v = torch.rand(4000, generator=g) * 1e-4
    m[[3, 70, 900]] = torch.tensor([math.nan, math.inf, -math.inf])
    v[[5, 70, 1200, 3999]] = torch.tensor([math.nan, math.inf, math.inf, math.nan])
    v[[10, 11, 12, 2000]] = 0.0
    m[[11, 12]] = 0.0
    path = tmp_path / "odd.pt"
    torch.save(_adam_sd(4000, exp_avg=m, exp_avg_sq=v), path)
    rc, err = cli("analyze", path, "-o", tmp_path / "out", "-q", "--device", "cpu")
    assert rc == 0, err
    row = pl.read_parquet(tmp_path / "out" / "tensors.parquet").row(0, named=True)
    m64, v64 = m.double().numpy(), v.double().numpy()
    bad = ~np.isfinite(m64) | ~np.isfinite(v64)
    assert row["nonfinite"] == int(bad.sum()) == 6
    assert row["zero_v"] == int(((v64 == 0) & ~bad).sum()) == 4
    assert math.isfinite(row["r_mean"]) and math.isfinite(row["u_std"])


def test_corrupt_error_class_for_truncation(tmp_path: Path) -> None:
    from adamscope.readers import registry

    path, target = place("torch", tmp_path)
    target.write_bytes(target.read_bytes()[:-100])
    with pytest.raises(CorruptCheckpointError):
        registry.detect(path)


@pytest.mark.parametrize("family", sorted(TORCH_FILES))
def test_memo_index_bomb_is_refused_before_allocating(family: str, tmp_path: Path) -> None:
    """One LONG_BINPUT index raised to 2**31 - 1 would make the C unpickler allocate ~32 GB."""
    import pickletools

    path, target = place(family, tmp_path)
    pkl = zip_entry(target, "data.pkl")
    op, pos = next(
        (op, p) for op, _, p in pickletools.genops(pkl) if op.name in ("BINPUT", "LONG_BINPUT")
    )
    width = 2 if op.name == "BINPUT" else 5
    bomb = b"r" + (2**31 - 1).to_bytes(4, "little")  # LONG_BINPUT 2**31 - 1
    rezip(TORCH_FILES[family], target, replace={"data.pkl": pkl[:pos] + bomb + pkl[pos + width :]})
    _one_error(path, tmp_path, str(target), "memo index 2147483647")


@pytest.mark.parametrize(("cut", "what"), [(5, "header"), (60, "header"), (-7, "data")])
def test_truncated_safetensors(cut: int, what: str, tmp_path: Path) -> None:
    from adamscope.readers import registry

    src = FIXTURES / "mlx" / "adam_fp32.safetensors"
    path = tmp_path / src.name
    path.write_bytes(src.read_bytes()[:cut])
    with pytest.raises(CorruptCheckpointError, match=f"truncated safetensors {what}") as err:
        registry.detect(path)
    assert str(path) in str(err.value)
    _one_error(path, tmp_path, str(path), f"truncated safetensors {what}")


def test_errors_are_printed_on_one_line_whatever_their_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readers and libraries sometimes put newlines in messages (pickle, torch.load): the CLI
    prints one line; an unforeseen exception type is still one line naming the file."""
    from adamscope.readers.lightning import LightningReader

    def broken(self: LightningReader) -> object:
        raise AdamscopeError(f"{self.path}: first part,\nsecond part")

    monkeypatch.setattr(LightningReader, "iter_tensors", broken)
    path, _ = place("lightning", tmp_path)
    rc, err = cli("analyze", path, "-o", tmp_path / "out", "-q")
    assert rc == 2 and err.count("\n") == 1 and "first part, second part" in err

    def crash(self: LightningReader) -> object:
        raise IndexError("list index out of range\n  (deep inside)")

    monkeypatch.setattr(LightningReader, "iter_tensors", crash)
    rc, err = cli("analyze", path, "-o", tmp_path / "out", "-q")
    assert rc == 2 and err.count("\n") == 1
    assert str(path) in err and "IndexError: list index out of range (deep inside)" in err
