"""Helpers of the hostile-input tests: mutate real fixture files, run the CLI, hash trees."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
LIGHTNING = sorted((FIXTURES / "lightning").glob("*.ckpt"))
TORCH_FILES = {
    "torch": FIXTURES / "torch" / "adam_names.pt",
    "nanogpt": FIXTURES / "nanogpt" / "compiled" / "ckpt.pt",
    "lightning": LIGHTNING[0],
    "hf_trainer": FIXTURES / "hf_trainer" / "gpt2" / "checkpoint-10" / "optimizer.pt",
}


def cli(*args: str) -> tuple[int, str]:
    """(exit code, stderr) of `adamscope ARGS` run in-process."""
    from adamscope.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a crash, not an error message: let the test show it
    return result.exit_code, result.stderr


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("adamscope: error:")]


def place(family: str, tmp: Path) -> tuple[Path, Path]:
    """A copy of the family's fixture under `tmp`: (path to analyse, the torch file inside it)."""
    src = TORCH_FILES[family]
    if family == "hf_trainer":
        folder = tmp / "checkpoint-10"
        shutil.copytree(src.parent, folder)
        return folder, folder / src.name
    dst = tmp / src.name
    shutil.copyfile(src, dst)
    return dst, dst


def rezip(src: Path, dst: Path, *, replace: dict[str, bytes | None]) -> Path:
    """Rewrite a torch zip file, replacing entries whose names end with a key (None: drop it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new
                    break
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


def zip_entry(path: Path, suffix: str) -> bytes:
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith(suffix))
        return zf.read(name)


def storages(path: Path) -> list[str]:
    """Names of the tensor storage entries of a torch zip file."""
    with zipfile.ZipFile(path) as zf:
        return [n for n in zf.namelist() if "/data/" in n]


def tree_hashes(root: Path) -> dict[str, tuple[str, int, int]]:
    """{relative path: (sha256, size, mtime_ns)} of every file under `root` (hidden ones too)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(root))] = (digest, st.st_size, st.st_mtime_ns)
    return out
