"""repair of the torch.save family, on checkpoints written at test time by torch.save (bare
optimizer state_dict, nanoGPT-style ckpt.pt) from a real proxy-GPT AdamW run: the output loads
with torch.load(weights_only=True) + load_state_dict and trains on; the reset tensors are zero;
every other leaf of the file is bit-identical; analyze of the output shows the reset."""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from pathlib import Path

import polars as pl
import pytest
import torch

import adamscope
from adamscope.repair import repair
from adamscope.sim import proxy

from ._make import CFG, differences, listing, same_bits, state_keys, step, trained


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A nanoGPT-style ckpt.pt and a bare optimizer file after 13 AdamW steps."""
    folder = tmp_path_factory.mktemp("torch_in")
    model, opt = trained(13)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iter_num": 13},
               folder / "ckpt.pt")  # fmt: skip
    torch.save(opt.state_dict(), folder / "optim.pt")
    return folder


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _resume(sd: dict) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = proxy.build_model(CFG)
    opt = proxy.build_optimizer(model, CFG)
    model.load_state_dict(sd["model"])
    opt.load_state_dict(sd["optimizer"])
    return model, opt


def test_nanogpt_layer_reset_and_eps(saved: Path, tmp_path: Path) -> None:
    src = saved / "ckpt.pt"
    before = _sha(src)
    plan = repair(src, tmp_path / "out", reset_layers="block.0", eps=1e-10)
    assert _sha(src) == before  # the input is never modified
    out = tmp_path / "out" / "ckpt.pt"
    assert plan.checkpoint == out and plan.format == "nanogpt" and plan.step == 13
    names = [r.tensor for r in plan.resets]
    assert (
        names and all(".h.0." in n for n in names) and {r.layer for r in plan.resets} == {"block.0"}
    )
    a = torch.load(src, weights_only=True)
    b = torch.load(out, weights_only=True)
    both = ("exp_avg", "exp_avg_sq")
    want = state_keys(a["optimizer"], names, prefix="optimizer/", states=both)
    want |= {f"optimizer/param_groups/{g}/eps" for g in range(2)}
    assert differences(a, b) == want  # everything else bit-identical, model weights included
    for key in want - {f"optimizer/param_groups/{g}/eps" for g in range(2)}:
        pid, state = key.split("/")[2], key.split("/")[3]
        assert not b["optimizer"]["state"][int(pid)][state].any()
    assert [g["eps"] for g in b["optimizer"]["param_groups"]] == [1e-10, 1e-10]
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None  # every CRC-32 right
    _only_the_edited_bytes_differ(src, out, n_tensors=2 * len(names), n_floats=2)
    model, opt = _resume(b)
    loss = step(model, opt, torch.Generator().manual_seed(7))
    assert math.isfinite(loss) and opt.param_groups[0]["eps"] == 1e-10
    manifest = json.loads((tmp_path / "out" / "repair.json").read_text())
    assert manifest["adamscope_version"] == adamscope.__version__
    assert manifest["files_changed"] == ["ckpt.pt"] and len(manifest["resets"]) == len(names)
    assert manifest["eps"][0] == {"where": "optimizer.param_groups[0]", "old": 1e-8, "new": 1e-10}


def _only_the_edited_bytes_differ(a: Path, b: Path, *, n_tensors: int, n_floats: int) -> None:
    """Byte-level: same size; the storage entries that differ are the reset tensors' (now all
    zero); data.pkl differs in 8-byte floats only; outside entry data only CRC fields differ."""
    x, y = a.read_bytes(), b.read_bytes()
    assert len(x) == len(y)
    outside = bytearray(len(x))  # 1 where a byte lies outside every entry's data
    outside[:] = b"\x01" * len(x)
    changed = []
    with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
        for info in za.infolist():
            head = x[info.header_offset : info.header_offset + 30]
            start = info.header_offset + 30 + int.from_bytes(head[26:28], "little")
            start += int.from_bytes(head[28:30], "little")
            outside[start : start + info.file_size] = bytes(info.file_size)
            da, db = za.read(info.filename), zb.read(info.filename)
            if da != db:
                changed.append(info.filename)
                if info.filename.endswith("data.pkl"):
                    diff = [i for i in range(len(da)) if da[i] != db[i]]
                    windows: list[int] = []  # 8-byte windows that cover every changed byte
                    for i in diff:
                        if not windows or i >= windows[-1] + 8:
                            windows.append(i)
                    assert 0 < len(windows) <= n_floats
                else:
                    assert not any(db)
    assert sum(1 for n in changed if not n.endswith("data.pkl")) == n_tensors
    stray = [i for i in range(len(x)) if outside[i] and x[i] != y[i]]
    assert len(stray) <= 8 * len(changed)  # the CRC-32 in the central directory and descriptor


def test_analyze_of_the_output_shows_the_reset(saved: Path, tmp_path: Path) -> None:
    repair(saved / "ckpt.pt", tmp_path / "out", reset_layers="head", reset="exp_avg")
    before = adamscope.analyze(saved / "ckpt.pt", gradients=False).layers
    after = adamscope.analyze(tmp_path / "out" / "ckpt.pt", gradients=False).layers
    m = dict(zip(after["layer"], after["m_norm"], strict=True))
    m0 = dict(zip(before["layer"], before["m_norm"], strict=True))
    assert m["head"] == 0.0 and m0["head"] > 0
    assert all(m[k] == m0[k] for k in m if k != "head")
    v = after.filter(pl.col("layer") == "head")["v_l1"].item()
    assert v == before.filter(pl.col("layer") == "head")["v_l1"].item() > 0  # v kept


def test_bare_optimizer_parameter_and_step_reset(saved: Path, tmp_path: Path) -> None:
    src = saved / "optim.pt"
    plan = repair(src, tmp_path / "out", reset_layers="lm_head.weight", reset_step=True)
    assert [(r.tensor, r.states) for r in plan.resets] == [
        ("lm_head.weight", ("exp_avg", "exp_avg_sq", "step"))
    ]
    a = torch.load(src, weights_only=True)
    b = torch.load(tmp_path / "out" / "optim.pt", weights_only=True)
    want = state_keys(a, ["lm_head.weight"], prefix="", states=("exp_avg", "exp_avg_sq", "step"))
    assert differences(a, b) == want
    model, _ = trained(0)
    opt = proxy.build_optimizer(model, CFG)
    opt.load_state_dict(b)
    step(model, opt, torch.Generator().manual_seed(3))
    steps = {n: float(opt.state[p]["step"]) for n, p in model.named_parameters()}
    assert steps["lm_head.weight"] == 1.0 and steps["transformer.wte.weight"] == 14.0


def test_memory_stays_bounded(tmp_path: Path) -> None:
    """Resetting 128 MB of state allocates a copy buffer's worth (16 MiB), not the tensors."""
    import tracemalloc

    n = 1 << 24
    p = torch.nn.Parameter(torch.zeros(n))
    opt = torch.optim.AdamW([p])
    p.grad = torch.ones(n)
    opt.step()
    sd = opt.state_dict()
    sd["param_groups"][0]["param_names"] = ["transformer.h.0.mlp.c_fc.weight"]
    torch.save(sd, tmp_path / "big.pt")
    del p, opt, sd
    tracemalloc.start()
    try:
        plan = repair(tmp_path / "big.pt", tmp_path / "out", reset_layers="block.0")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert plan.bytes_zeroed == 2 * 4 * n
    assert peak < 48 << 20, peak
    back = torch.load(tmp_path / "out" / "big.pt", weights_only=True, mmap=True)
    assert not back["state"][0]["exp_avg"].any() and not back["state"][0]["exp_avg_sq"].any()


def test_dry_run_writes_nothing(saved: Path, tmp_path: Path) -> None:
    plan = repair(saved / "optim.pt", tmp_path / "out", reset_layers="embedding", dry_run=True)
    assert plan.dry_run and {r.layer for r in plan.resets} == {"embedding"}
    assert plan.files_changed == ("optim.pt",) and plan.bytes_zeroed > 0
    assert any(line.startswith("  would reset embedding") for line in plan.lines())
    assert listing(tmp_path) == []


def test_a_failure_while_writing_leaves_nothing(
    saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adamscope.repair import output

    def boom(*args: object, **kw: object) -> int:
        raise OSError("disk full")

    monkeypatch.setattr(output, "apply", boom)
    with pytest.raises(adamscope.AdamscopeError, match="disk full"):
        repair(saved / "optim.pt", tmp_path / "out", reset_layers="head")
    assert listing(tmp_path) == []


def test_out_must_be_new_and_outside_the_input(saved: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(adamscope.AdamscopeError, match="already exists"):
        repair(saved / "optim.pt", tmp_path / "taken", reset_layers="head")
    with pytest.raises(adamscope.AdamscopeError, match="inside the input"):
        repair(saved, saved / "fixed", reset_layers="head")
    with pytest.raises(adamscope.AdamscopeError, match="nothing to repair"):
        repair(saved / "optim.pt", tmp_path / "out")
    with pytest.raises(adamscope.AdamscopeError, match="is no verdict"):
        repair(saved / "optim.pt", tmp_path / "out", reset_layers="block.9")
    with pytest.raises(adamscope.AdamscopeError, match="eps 0.0: needs"):
        repair(saved / "optim.pt", tmp_path / "out", eps=0.0)
    assert listing(tmp_path) == ["taken"]


def test_same_bits_tells_nan_payloads_apart() -> None:  # the helper the checks above rely on
    a = torch.tensor([float("nan"), 0.0])
    assert same_bits(a, a.clone()) and not same_bits(a, torch.tensor([float("nan"), -0.0]))


def test_cli_prints_the_plan(saved: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from adamscope.cli import app

    args = ["repair", str(saved / "ckpt.pt"), "-o", str(tmp_path / "out")]
    args += ["--reset-layers", "head", "--reset", "exp_avg", "--eps", "1e-9"]
    dry = CliRunner().invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would reset head (named layer): exp_avg of 2 tensors" in dry.output
    assert "would set eps 1e-08 -> 1e-09 in optimizer.param_groups[1]" in dry.output
    assert listing(tmp_path) == []
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert f"-> {tmp_path / 'out' / 'ckpt.pt'}" in done.output
    assert listing(tmp_path) == ["out", "out/ckpt.pt", "out/repair.json"]
    bad = CliRunner().invoke(app, [*args[:4], "--reset-layers", "head", "--reset", "m"])
    assert bad.exit_code == 2 and "reset 'm': needs 'exp_avg' or 'both'" in bad.stderr


def test_amsgrad_max_is_reset_with_both(tmp_path: Path) -> None:
    model = proxy.build_model(CFG)
    opt = torch.optim.AdamW(model.named_parameters(), amsgrad=True)
    gen = torch.Generator().manual_seed(2)
    for _ in range(2):
        step(model, opt, gen)
    torch.save(opt.state_dict(), tmp_path / "optim.pt")
    plan = repair(tmp_path / "optim.pt", tmp_path / "out", reset_layers="lm_head.weight")
    assert plan.resets[0].states == ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    a = torch.load(tmp_path / "optim.pt", weights_only=True)
    b = torch.load(tmp_path / "out" / "optim.pt", weights_only=True)
    states = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    assert differences(a, b) == state_keys(a, ["lm_head.weight"], prefix="", states=states)
