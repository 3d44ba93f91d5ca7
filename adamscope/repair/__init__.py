"""`repair(path, out, ...)`: write a copy of a checkpoint with chosen layers' Adam moments reset
and/or eps changed (docs/repair.md), in the same format and layout, the input untouched.

plan.py: options, the per-format Layout and the RepairPlan (what --dry-run prints, repair.json
records); select.py: which tensors (verdicts from analyze's tables, layer or parameter names);
one module per format family (torch_file.py: bare optimizer, nanoGPT, Lightning; hf_trainer.py;
dcp.py; deepspeed.py) that says where each tensor's bytes are; zippatch.py: the byte edits of
torch zip files; output.py: the copy into a temporary folder renamed at the end.
"""

from __future__ import annotations

import os
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from adamscope.config import AnalyzeOptions, OptionError
from adamscope.errors import AdamscopeError, UnsupportedFormatError
from adamscope.repair.plan import (
    MOMENTS,
    EpsChange,
    EpsSlot,
    Layout,
    RepairOptions,
    RepairPlan,
    TensorReset,
)
from adamscope.repair.zippatch import Edit, Window

__all__ = ["RepairOptions", "RepairPlan", "TensorReset", "EpsChange", "repair"]

SUPPORTED = "torch-optim, nanogpt, lightning, hf-trainer, dcp, deepspeed"


def repair(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    options: RepairOptions | None = None,
    **kw: Any,
) -> RepairPlan:
    """Write `out/<name of path>` (the repaired checkpoint) and `out/repair.json`.

    Args:
        path: one checkpoint (a file or a checkpoint folder, not a run folder).
        out: a folder that does not exist yet; it appears whole at the end, or not at all.
        options: a RepairOptions; keyword options override its fields (`reset_layers="primed"`,
            `reset="exp_avg"`, `eps=1e-10`, `dry_run=True`, ...) or, for any other name, the
            analysis options used to read it and judge verdicts (`model=`, `suppression=`, ...).

    Returns:
        The RepairPlan: what was (or, with dry_run, would be) changed.

    Raises:
        AdamscopeError: one line naming the file and what is wrong (the same errors as analyze
            for a broken or hostile input); nothing is written then.
    """
    opts = _options(options, kw)
    path, out = Path(path), Path(out)
    from adamscope.repair.output import check_out

    check_out(out, source=path)
    plan, edits, layout = _guarded(path, _plan, path, out, opts)
    if opts.dry_run:
        return plan
    from adamscope.repair.output import write

    _guarded(
        path,
        write,
        out,
        root=layout.root,
        files=layout.files,
        edits=edits,
        manifest=plan.manifest(),
    )
    return plan


def _options(options: RepairOptions | None, kw: dict[str, Any]) -> RepairOptions:
    own = {f.name for f in fields(RepairOptions)}
    base = options
    mine = {k: v for k, v in kw.items() if k in own}
    rest = {k: v for k, v in kw.items() if k not in own}
    if base is None:
        analysis = mine.pop("analysis", AnalyzeOptions())
        base = RepairOptions(analysis=analysis.updated(**rest), **mine)
    else:
        analysis = mine.pop("analysis", base.analysis)
        base = replace(base, analysis=analysis.updated(**rest) if rest else analysis, **mine)
    if base.analysis.reader.trust_pickle:
        raise OptionError(
            "repair edits the checkpoint's bytes and reads pickles only through the restricted "
            "unpickler: trust_pickle is not supported"
        )
    return base


def _guarded(path: Path, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """fn(...), with a failure that is not an AdamscopeError (a file broken in a way no check
    foresaw) turned into one line naming the checkpoint."""
    try:
        return fn(*args, **kwargs)
    except AdamscopeError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised as a user-facing error, traceback chained
        detail = " ".join(str(e).split())[:200]
        raise AdamscopeError(f"{path}: cannot repair ({type(e).__name__}: {detail})") from e


def _layout(path: Path, opts: RepairOptions) -> Layout:
    from adamscope.readers import open_checkpoint
    from adamscope.repair import dcp, deepspeed, hf_trainer, torch_file

    try:
        reader = open_checkpoint(path, opts.analysis.reader)
    except UnsupportedFormatError:
        _refuse_run_folder(path)
        raise
    families = {
        "torch-optim": torch_file,
        "nanogpt": torch_file,
        "lightning": torch_file,
        "hf-trainer": hf_trainer,
        "dcp": dcp,
        "deepspeed": deepspeed,
    }
    family = families.get(reader.name)
    if family is None:
        raise UnsupportedFormatError(
            f"{path}: a {reader.name} checkpoint; repair writes {SUPPORTED} checkpoints only"
        )
    return family.layout(reader)


def _refuse_run_folder(path: Path) -> None:
    """Raises AdamscopeError when `path` is a run folder of several checkpoints."""
    from adamscope.pipeline.discovery import discover

    if not path.is_dir():
        return
    try:
        found = discover(path)
    except AdamscopeError:
        return
    if len(found) > 1:
        raise UnsupportedFormatError(
            f"{path}: a run folder of {len(found)} checkpoints; repair takes one of them "
            f"(e.g. {found[-1].path})"
        )


def _plan(path: Path, out: Path, opts: RepairOptions) -> tuple[RepairPlan, list, Layout]:
    from adamscope.repair.select import choose
    from adamscope.repair.torch_file import check_unshared

    layout = _layout(path, opts)
    chosen, verdicts, notes = choose(layout, path, opts) if opts.reset_layers else ({}, "", [])
    if not chosen and opts.eps is None:
        raise AdamscopeError(f"{path}: nothing to repair: {'; '.join(notes) or 'no tensor chosen'}")
    edits, resets = _resets(path, layout, chosen, opts)
    check_unshared(layout.trees, edits, source=str(path))
    eps_edits, changes = _eps(path, layout, opts.eps) if opts.eps is not None else ([], [])
    edits += eps_edits
    changed = {e.window.file for e in edits}
    rel = [_rel(f, layout.root) for f in layout.files]
    plan = RepairPlan(
        source=path,
        out=out,
        checkpoint=out / layout.root.name,
        format=layout.format,
        step=layout.step,
        request={
            "reset_layers": list(opts.reset_layers),
            "reset": opts.reset,
            "reset_step": opts.reset_step,
            "eps": opts.eps,
            "from_tables": None if opts.from_tables is None else str(opts.from_tables),
        },
        verdicts=verdicts or "not needed (no --reset-layers verdict)",
        resets=tuple(resets),
        eps=tuple(changes),
        files_changed=tuple(r for f, r in zip(layout.files, rel, strict=True) if f in changed),
        files_copied=tuple(r for f, r in zip(layout.files, rel, strict=True) if f not in changed),
        bytes_zeroed=sum(e.nbytes for e in edits if e.data is None),
        notes=tuple(notes + layout.notes),
        dry_run=opts.dry_run,
    )
    return plan, edits, layout


def _resets(
    path: Path, layout: Layout, chosen: dict[str, tuple[str, str]], opts: RepairOptions
) -> tuple[list[Edit], list[TensorReset]]:
    """The zeroing edits of the chosen tensors' states, and what each reset is."""
    edits: list[Edit] = []
    resets = []
    for name, (layer, why) in chosen.items():
        slots = layout.tensors[name]
        states = [k for k in MOMENTS[opts.reset] if k in slots.moments]
        for k in states:
            edits += slots.moments[k]
        if opts.reset_step:
            if slots.step is None:
                raise UnsupportedFormatError(
                    f"{path}: cannot reset the step of '{name}': {slots.step_note}"
                )
            edits += slots.step
            states.append("step")
        resets.append(
            TensorReset(tensor=name, layer=layer, why=why, states=tuple(states), numel=slots.numel)
        )
    return edits, resets


def _eps(path: Path, layout: Layout, eps: float) -> tuple[list[Edit], list[EpsChange]]:
    """The edits that set every stored eps to `eps` (each pickle unpickled once to find them)."""
    from adamscope.repair.zippatch import float_edit, locate_floats

    if not layout.eps:
        raise UnsupportedFormatError(f"{path}: no param group stores eps")
    windows: dict[Window, list[EpsSlot]] = {}
    for slot in layout.eps:
        windows.setdefault(slot.window, []).append(slot)
    edits, changes = [], []
    for window, slots in windows.items():
        found = locate_floats(window, [s.path for s in slots])
        for s in slots:
            offset, old = found[s.path]
            edits.append(float_edit(window, offset, eps))
            changes.append(EpsChange(where=s.label, old=old, new=eps))
    return edits, changes


def _rel(f: Path, root: Path) -> str:
    return f.name if f == root else str(f.relative_to(root))
