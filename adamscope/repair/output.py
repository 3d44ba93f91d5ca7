"""Writing a repaired checkpoint: checks on -o, the byte-for-byte copy into a temporary folder
beside it, the edits, repair.json, and the rename that makes it appear whole (or not at all)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

from adamscope.errors import AdamscopeError, CorruptCheckpointError
from adamscope.repair.zippatch import Edit, apply

MANIFEST = "repair.json"


def checkpoint_files(folder: Path) -> list[Path]:
    """Every file under `folder`, sorted (what a folder checkpoint is made of).

    Raises:
        CorruptCheckpointError: a FIFO, device, socket or symlinked folder inside it (copying one
            could block forever or leave the checkpoint).
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for d in dirnames:
            if (Path(dirpath) / d).is_symlink():
                raise CorruptCheckpointError(
                    f"{Path(dirpath) / d}: a symlinked folder inside the checkpoint; repair "
                    "copies only plain files and folders"
                )
        for name in filenames:
            p = Path(dirpath) / name
            try:
                mode = p.stat().st_mode
            except OSError as e:
                raise CorruptCheckpointError(f"{p}: cannot read ({e.strerror or e})") from None
            if not stat.S_ISREG(mode):
                raise CorruptCheckpointError(
                    f"{p}: not a regular file (a FIFO, device or socket); repair copies only "
                    "plain files"
                )
            out.append(p)
    return sorted(out)


def check_out(out: Path, *, source: Path) -> None:
    """-o must be a new path outside the input, not through a symlink.

    Raises:
        AdamscopeError: naming -o and what is wrong with it.
    """
    if out.is_symlink():
        raise AdamscopeError(f"{out}: is a symlink; repair never writes through one")
    if out.exists():
        raise AdamscopeError(
            f"{out}: already exists; repair writes a new folder (pass a path that does not exist)"
        )
    src, dst = source.resolve(), out.resolve()
    if dst == src or src in dst.parents:
        raise AdamscopeError(
            f"{out}: is inside the input {source}; the input is never modified: pass -o outside it"
        )
    if not out.parent.is_dir():
        raise AdamscopeError(f"{out.parent}: no such folder (the parent of -o must exist)")


def write(
    out: Path,
    *,
    root: Path,
    files: Sequence[Path],
    edits: Sequence[Edit],
    manifest: dict,
) -> dict[str, int]:
    """Copy `files` (under `root`, or `root` itself) into `out/<root name>/`, apply `edits`
    (offsets in the input files) to the copies, write out/repair.json, all in a temporary folder
    beside `out` that is renamed to `out` at the end; on any failure it is removed.

    Returns:
        {relative file name: bytes edited} of the files changed.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.repair-", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        dest = tmp / root.name
        by_file: dict[Path, list[Edit]] = {}
        for e in edits:
            by_file.setdefault(e.window.file, []).append(e)
        changed: dict[str, int] = {}
        for f in files:
            target = dest if f == root else dest / f.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target, follow_symlinks=True)
            if f in by_file:
                changed[_rel(f, root)] = apply(target, by_file.pop(f))
        assert not by_file, f"edits of files not copied: {sorted(map(str, by_file))}"
        manifest = manifest | {"files_changed": sorted(changed)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return changed


def _rel(f: Path, root: Path) -> str:
    return f.name if f == root else str(f.relative_to(root))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
