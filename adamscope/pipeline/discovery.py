"""Find the checkpoints under a PATH: one file, one checkpoint folder, or a run folder of many."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from adamscope.errors import AdamscopeError, CorruptCheckpointError, UnsupportedFormatError
from adamscope.readers.guard import brief

log = logging.getLogger(__name__)

# checkpoint-N, step_N, step-N, stepN, global_stepN, iter_N, `*step=N*.ckpt`, ckpt_N.pt ... (and
# folders named N: see step_from_name)
_STEP_IN_NAME = re.compile(
    r"(?:checkpoint|global_step|step|iter|iteration|ckpt)[-_=]?(\d+)", re.IGNORECASE
)


@dataclass(frozen=True)
class Found:
    """One checkpoint to analyse: its path and the step its name suggests (for ordering)."""

    path: Path
    name_step: int | None
    reader: type


class _Broken:
    """The `reader` of a checkpoint whose detection failed because the file is broken: building
    it raises that error, so the checkpoint fails (or, with keep_going, is listed as failed)
    instead of silently dropping out of a run folder."""

    name = "broken"
    error: AdamscopeError

    def __init__(self, path: Path, **_: object) -> None:
        raise self.error


def _broken(error: AdamscopeError) -> type:
    return type("BrokenCheckpoint", (_Broken,), {"error": error})


def step_from_name(path: Path) -> int | None:
    matches = _STEP_IN_NAME.findall(path.name)
    if matches:
        return int(matches[-1])
    # Orbax's CheckpointManager names step folders by the bare number (`run/1000/default/`)
    if path.name.isascii() and path.name.isdigit() and path.is_dir():
        return int(path.name)
    return None


def discover(path: Path) -> list[Found]:
    """List the checkpoints at `path` in step order.

    Raises:
        AdamscopeError: the path does not exist or holds no checkpoint adamscope can read.
    """
    from adamscope.readers import registry

    if not path.exists():
        raise AdamscopeError(f"{path}: no such file or directory")
    if not path.is_dir():  # a file, or a FIFO/device that detect refuses naming it
        return [Found(path, step_from_name(path), registry.detect(path))]
    children = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    dangling = [c for c in children if _dangling(c)]
    for c in dangling:  # named, never skipped in silence
        log.warning("%s: %s; skipped", c, _dangling(c))
    children = [c for c in children if c not in dangling]
    stepped = _readable([c for c in children if step_from_name(c) is not None], warn=True)
    # a step entry that is a broken link is a checkpoint of the run gone missing: it fails (and
    # --keep-going lists it) like a truncated one
    stepped += [
        Found(c, step_from_name(c), _broken(CorruptCheckpointError(f"{c}: {_dangling(c)}")))
        for c in dangling
        if step_from_name(c) is not None
    ]
    itself, broken = _detect_quiet(path) if len(stepped) < 2 else (None, None)  # the folder itself
    if broken is not None and stepped:
        log.warning("%s; analysing the checkpoints inside the folder instead", broken)
    if len(stepped) >= 2 or (stepped and itself is None):
        stepped.sort(key=lambda f: (f.name_step if f.name_step is not None else -1, f.path.name))
        return stepped
    if itself is not None:
        return [Found(path, step_from_name(path), itself)]
    # A folder holding checkpoint files without steps in their names (nanoGPT's out/ckpt.pt).
    plain = _readable([c for c in children if c.is_file()])
    if plain:
        if len(plain) > 1:
            log.warning(
                "%s: %d checkpoints without a step in their names; analysed in name order",
                path,
                len(plain),
            )
        return plain
    if broken is not None:  # e.g. a `latest` that is a FIFO: say so, not "no checkpoint"
        raise broken
    listing = ", ".join(c.name for c in children[:12]) or "nothing"
    more = f" (+{len(children) - 12} more)" if len(children) > 12 else ""
    raise UnsupportedFormatError(
        f"{path}: no checkpoint found; the folder holds {listing}{more}. Expected a checkpoint "
        "file/folder or a run folder of checkpoint-N, step_N, global_stepN or *step=N*.ckpt entries"
    )


def _dangling(p: Path) -> str | None:
    """What is wrong with `p` when it is a symlink to nothing or a symlink loop, else None."""
    if not p.is_symlink():
        return None
    try:
        p.resolve(strict=True)
        return None
    except RuntimeError:  # older Pythons raise this for loops
        return "a symlink loop"
    except OSError as e:
        import errno

        if e.errno == errno.ELOOP:
            return "a symlink loop"
        return f"a broken symlink (to {brief(os.readlink(p), 200)})"


def _readable(paths: list[Path], *, warn: bool = False) -> list[Found]:
    """The checkpoints among `paths`. A broken one (truncated, corrupt) is kept, with a reader
    that raises its error; one that is not a checkpoint is skipped (logged when `warn`)."""
    found = []
    for p in paths:
        try:
            f = _resolve(p)
        except CorruptCheckpointError as e:
            log.debug("%s", e)  # reported when the checkpoint is analysed
            found.append(Found(p, step_from_name(p), _broken(e)))
            continue
        if f is not None:
            found.append(f)
        elif warn:
            log.warning("%s: not a checkpoint adamscope can read; skipped", p)
    return found


def _resolve(p: Path) -> Found | None:
    """`p` as a checkpoint: itself, or the one checkpoint file inside a step folder (step_N/ckpt.pt).

    Raises:
        CorruptCheckpointError: `p` (or the one file inside it) is a broken checkpoint.
    """
    from adamscope.readers import registry

    try:
        return Found(p, step_from_name(p), registry.detect(p))
    except CorruptCheckpointError:
        if not p.is_dir():
            raise
    except AdamscopeError:
        pass
    if not p.is_dir():
        return None
    inner, broken = [], []
    for c in sorted(p.iterdir()):
        if c.is_file() and not c.name.startswith("."):
            try:
                inner.append(Found(c, step_from_name(p), registry.detect(c)))
            except CorruptCheckpointError as e:
                broken.append(e)
            except AdamscopeError:
                continue
    if not inner and len(broken) == 1:
        raise broken[0]
    if len(inner) > 1:
        log.warning(
            "%s: several checkpoint files (%s); skipped", p, ", ".join(f.path.name for f in inner)
        )
    return inner[0] if len(inner) == 1 else None


def _detect_quiet(path: Path) -> tuple[type | None, CorruptCheckpointError | None]:
    """(the reader of `path` or None when no reader recognises it, the error when a broken file
    in it stopped the detection)."""
    from adamscope.readers import registry

    try:
        return registry.detect(path), None
    except CorruptCheckpointError as e:
        return None, e
    except AdamscopeError:
        return None, None
