"""A checkpoint never runs code: payloads in every torch-pickle family are refused, naming the file
and the global, before anything executes; the audit keeps every pickle load in adamscope/ on the
restricted path.

The malicious files are real fixtures re-saved by torch.save with a payload object added inside
their tree (the writer pickles the payload's __reduce__ exactly as an attacker's file would).
"""

from __future__ import annotations

import ast
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from _hostile_helpers import FIXTURES, ROOT, TORCH_FILES, cli, error_lines, place

from adamscope.errors import UnsafePickleError
from adamscope.readers import registry
from adamscope.readers.torchzip import is_legacy_torch, load_lazy

EVIL_MODULE = "adamscope_evil_payload_mod"


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - the attack
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - the attack
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


class _LoadFromBytes:
    """torch's own nested-unpickling helper: the classic way around a torch-only allowlist."""

    def __reduce__(self):  # noqa: ANN204 - the attack
        return (torch.storage._load_from_bytes, (b"not a pickle",))


def _unknown_module_payload(tmp: Path, marker: Path) -> object:
    """A payload naming a function of a module that would touch `marker` when imported."""
    (tmp / f"{EVIL_MODULE}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef run(*a):\n    pass\n"
    )
    mod = types.ModuleType(EVIL_MODULE)

    def run(*_a: object) -> None:  # pragma: no cover - never called
        pass

    run.__module__ = EVIL_MODULE
    run.__qualname__ = "run"
    mod.run = run  # type: ignore[attr-defined]
    sys.modules[EVIL_MODULE] = mod  # only so that pickle can name it at save time

    class _Import:
        def __reduce__(self):  # noqa: ANN204 - the attack
            return (run, ())

    return _Import()


def _inject(family: str, target: Path, payload: object) -> None:
    tree = torch.load(target, weights_only=True)  # our own fixture: trusted
    if family in ("torch", "hf_trainer"):
        tree["param_groups"][0]["evil"] = payload  # deep inside the optimizer state
    elif family == "nanogpt":
        tree["config"] = {"n_layer": 2, "evil": [payload]}
    else:
        tree["hyper_parameters"] = {"evil": payload}
    torch.save(tree, target)


PAYLOADS = {
    "os.system": ("posix.system", _System),
    "eval": ("builtins.eval", _Eval),
    "torch._load_from_bytes": ("torch.storage._load_from_bytes", lambda m: _LoadFromBytes()),
}


@pytest.mark.parametrize("family", sorted(TORCH_FILES))
@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_payload_is_refused_naming_file_and_global(family: str, kind: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path, target = place(family, tmp_path)
    qualname, make = PAYLOADS[kind]
    _inject(family, target, make(marker))
    registry.detect(path)  # format probes peek with unknown globals stubbed: nothing runs either
    code, err = cli("analyze", path, "-o", tmp_path / "out", "-q")
    assert code == 2
    (line,) = error_lines(err)
    assert str(target) in line and f"'{qualname}'" in line and "nothing was executed" in line
    assert not marker.exists()
    assert not (tmp_path / "out" / "tensors.parquet").exists()


@pytest.mark.parametrize("family", sorted(TORCH_FILES))
def test_unknown_module_is_never_imported(
    family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "imported"
    path, target = place(family, tmp_path)
    try:
        _inject(family, target, _unknown_module_payload(tmp_path, marker))
    finally:
        sys.modules.pop(EVIL_MODULE, None)
    monkeypatch.syspath_prepend(str(tmp_path))  # importing it would now touch the marker
    with pytest.raises(UnsafePickleError, match=f"'{EVIL_MODULE}.run'") as err:
        load_lazy(target)
    assert str(target) in str(err.value)
    code, err_text = cli("analyze", path, "-o", tmp_path / "out", "-q")
    assert code == 2 and f"{EVIL_MODULE}.run" in err_text
    assert EVIL_MODULE not in sys.modules and not marker.exists()


def test_legacy_format_check_runs_no_pickle(tmp_path: Path) -> None:
    """A 31-byte file starting like a protocol-2 pickle: the old check pickle.loads()-ed it."""
    marker = tmp_path / "P"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"\x80\x02cposix\nsystem\n(S'touch P'\ntR.")
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        assert not is_legacy_torch(evil)
        code, err = cli("analyze", evil, "-o", tmp_path / "out", "-q")
    finally:
        os.chdir(cwd)
    assert code == 2 and str(evil) in err
    assert not marker.exists()


def test_real_legacy_file_is_recognised_and_refused(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save({"state": {}, "param_groups": []}, path, _use_new_zipfile_serialization=False)
    assert is_legacy_torch(path)
    code, err = cli("analyze", path, "-o", tmp_path / "out", "-q")
    assert code == 2 and "legacy" in err and str(path) in err


def test_trust_pickle_is_documented_and_loud(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from typer.testing import CliRunner

    from adamscope.cli import app

    help_text = CliRunner().invoke(app, ["analyze", "--help"]).output
    assert "--trust-pickle" in help_text and "DANGEROUS" in help_text
    path, _ = place("torch", tmp_path)
    with pytest.warns(UserWarning, match="runs any code"):
        code, _ = cli("analyze", path, "-o", tmp_path / "out", "-q", "--trust-pickle")
    assert code == 0
    assert "EXECUTE CODE" in caplog.text


# --- audit: every place in adamscope/ that could unpickle ---------------------------------------
def _calls(tree: ast.AST) -> list[tuple[str, ast.Call, str]]:
    """(dotted callee, call node, enclosing function name) for every call in a module."""
    out: list[tuple[str, ast.Call, str]] = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.FunctionDef) else func
            if isinstance(child, ast.Call):
                out.append((ast.unparse(child.func), child, func))
            visit(child, name)

    visit(tree, "")
    return out


def _kw(call: ast.Call, name: str) -> str | None:
    return next((ast.unparse(k.value) for k in call.keywords if k.arg == name), None)


def test_audit_every_unpickling_call_in_adamscope_is_restricted() -> None:
    problems = []
    for py in sorted((ROOT / "adamscope").rglob("*.py")):
        rel = py.relative_to(ROOT)
        tree = ast.parse(py.read_text())
        for callee, call, func in _calls(tree):
            where = f"{rel}:{call.lineno} ({func or 'module'})"
            if callee.endswith("torch.load"):
                trusted = str(rel).endswith("torchzip.py") and func == "_load_trusted"
                if _kw(call, "weights_only") != "True" and not trusted:
                    problems.append(f"{where}: torch.load without weights_only=True")
            if callee in ("pickle.load", "pickle.loads", "cPickle.loads", "dill.load"):
                problems.append(f"{where}: unrestricted {callee}")
            if callee.endswith("np.load") or callee.endswith("numpy.load"):
                if _kw(call, "allow_pickle") not in (None, "False"):
                    problems.append(f"{where}: np.load with allow_pickle")
            if callee in ("eval", "exec", "__import__", "importlib.import_module"):
                problems.append(f"{where}: {callee}")
        for node in ast.walk(tree):  # every Unpickler subclass must resolve globals itself
            if isinstance(node, ast.ClassDef) and any(
                ast.unparse(b).endswith("Unpickler") for b in node.bases
            ):
                methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                if "find_class" not in methods:
                    problems.append(f"{rel}:{node.lineno}: {node.name} has no find_class")
    assert problems == []


def test_trusted_load_is_reached_only_through_trust_pickle() -> None:
    src = (ROOT / "adamscope" / "readers" / "torchzip.py").read_text()
    tree = ast.parse(src)
    users = [
        n.name
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef)
        and any(
            isinstance(c, ast.Call) and ast.unparse(c.func) == "_load_trusted" for c in ast.walk(n)
        )
    ]
    assert users == ["load_lazy"]
    assert "if trust_pickle:\n        return _load_trusted(path)" in src


def test_fixture_families_load_without_trust(tmp_path: Path) -> None:
    """The allowlist is not so short that real checkpoints need --trust-pickle."""
    for family, path in TORCH_FILES.items():
        assert load_lazy(path) is not None, family
    for ds in sorted((FIXTURES / "deepspeed").glob("zero*/global_step*/*.pt")):
        load_lazy(ds)
