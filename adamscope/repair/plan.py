"""What a repair does, before it does it: the options (a frozen dataclass that checks itself), the
per-format `Layout` of where each tensor's state lies, and the `RepairPlan` that `--dry-run`
prints and repair.json records."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from adamscope.config import AnalyzeOptions, OptionError
from adamscope.repair.zippatch import Edit, Window

Reset = Literal["exp_avg", "both"]
MOMENTS = {"exp_avg": ("exp_avg",), "both": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")}


@dataclass(frozen=True, kw_only=True)
class RepairOptions:
    """Options of `adamscope repair` (docs/repair.md).

    reset_layers: stage names (primed, unstable, vanishing, ...: every layer with that verdict),
        layer names (embedding, block.3, head) or parameter names; empty: reset nothing.
    reset: "exp_avg" (m = 0, v kept) or "both" (m = 0 and v = 0, AMSGrad's max too).
    reset_step: also set the reset tensors' step to 0 where the format stores one per tensor
        (needs reset="both": a kept v with a reset step would be bias-corrected as if new).
    eps: the new eps of every param group; None keeps it.
    from_tables: take verdicts from the tables `analyze -o OUT` wrote (else analyse in memory).
    dry_run: plan only; write nothing.
    analysis: how the checkpoint is read and, for verdicts, analysed (thresholds, --model, ...).
    """

    reset_layers: tuple[str, ...] = ()
    reset: Reset = "both"
    reset_step: bool = False
    eps: float | None = None
    from_tables: Path | None = None
    dry_run: bool = False
    analysis: AnalyzeOptions = field(default_factory=AnalyzeOptions)

    def __post_init__(self) -> None:
        if isinstance(self.reset_layers, str):
            items = tuple(s.strip() for s in self.reset_layers.split(",") if s.strip())
            object.__setattr__(self, "reset_layers", items)
        if self.reset not in MOMENTS:
            raise OptionError(f"reset {self.reset!r}: needs 'exp_avg' or 'both'")
        if self.reset_step and self.reset != "both":
            raise OptionError(
                "reset_step needs reset='both': a kept exp_avg_sq with step 0 would be "
                "bias-corrected as if it were one step old (updates ~4x too small)"
            )
        if self.eps is not None and not (math.isfinite(self.eps) and self.eps > 0):
            raise OptionError(
                f"eps {self.eps}: needs a finite number > 0 (with eps = 0 torch Adam divides 0 "
                "by 0 wherever exp_avg_sq is 0)"
            )
        if not self.reset_layers and self.eps is None:
            raise OptionError("nothing to repair: give reset_layers (--reset-layers) and/or eps")
        if self.from_tables is not None:
            object.__setattr__(self, "from_tables", Path(self.from_tables))


@dataclass(kw_only=True)
class TensorSlots:
    """Where one parameter's Adam state lies on disk: the byte spans of each state tensor (a
    sharded tensor has several), and those of its step when the format stores one per tensor."""

    name: str
    numel: int
    moments: dict[str, list[Edit]]  # state name -> zeroing edits (exp_avg, exp_avg_sq, ...)
    step: list[Edit] | None = None  # zeroing edits of a per-tensor step, None: not per tensor
    step_note: str = ""  # why the step cannot be reset on its own


@dataclass(frozen=True, kw_only=True)
class EpsSlot:
    """One eps in the checkpoint: `label` for people, the float at `path` of the pickle in
    `window` (the pickled root: a whole torch.save file, or one DCP blob)."""

    label: str
    window: Window
    path: tuple[Any, ...]


@dataclass(kw_only=True)
class Layout:
    """A checkpoint as repair sees it: the files that make it up (copied byte for byte unless
    edited) and where each tensor's state and each eps lies."""

    format: str
    root: Path  # the checkpoint: one file, or the folder whose files are copied
    files: list[Path]  # every file of the checkpoint, under root (root itself for one file)
    tensors: dict[str, TensorSlots]
    eps: list[EpsSlot]
    step: int | None = None
    notes: list[str] = field(default_factory=list)  # what was not copied, and why
    trees: list[Any] = field(default_factory=list)  # unpickled trees (for the shared-storage check)


@dataclass(frozen=True, kw_only=True)
class TensorReset:
    tensor: str
    layer: str
    why: str  # the verdict ("stage primed") or "named"
    states: tuple[str, ...]  # what is set to 0: exp_avg, exp_avg_sq, max_exp_avg_sq, step
    numel: int


@dataclass(frozen=True, kw_only=True)
class EpsChange:
    where: str
    old: float
    new: float


@dataclass(frozen=True, kw_only=True)
class RepairPlan:
    """What a repair changes (returned by `repair`; written as repair.json beside the output)."""

    source: Path
    out: Path
    checkpoint: Path  # the repaired checkpoint: out / source's name
    format: str
    step: int | None
    request: dict[str, Any]
    verdicts: str  # where the verdicts came from
    resets: tuple[TensorReset, ...]
    eps: tuple[EpsChange, ...]
    files_changed: tuple[str, ...]
    files_copied: tuple[str, ...]
    bytes_zeroed: int
    notes: tuple[str, ...] = ()
    dry_run: bool = False

    def manifest(self) -> dict[str, Any]:
        from adamscope._version import __version__

        return {
            "adamscope_version": __version__,
            "source": str(self.source.resolve()),
            "checkpoint": self.checkpoint.name,
            "format": self.format,
            "step": self.step,
            "request": self.request,
            "verdicts_from": self.verdicts,
            "resets": [r.__dict__ | {"states": list(r.states)} for r in self.resets],
            "eps": [e.__dict__ for e in self.eps],
            "files_changed": list(self.files_changed),
            "files_copied_unchanged": list(self.files_copied),
            "bytes_zeroed": self.bytes_zeroed,
            "notes": list(self.notes),
        }

    def lines(self) -> list[str]:
        """What `adamscope repair` prints: one line per layer and per eps change."""
        verb = "would" if self.dry_run else "did"
        out = [f"{self.source} ({self.format}, step {self.step}): verdicts from {self.verdicts}"]
        by_layer: dict[str, list[TensorReset]] = {}
        for r in self.resets:
            by_layer.setdefault(r.layer, []).append(r)
        for layer, rs in by_layer.items():
            states = ", ".join(dict.fromkeys(s for r in rs for s in r.states))
            numel = sum(r.numel for r in rs)
            out.append(
                f"  {verb} reset {layer} ({rs[0].why}): {states} of {len(rs)} tensors, "
                f"{numel:,} elements"
            )
        for e in self.eps:
            out.append(f"  {verb} set eps {e.old:g} -> {e.new:g} in {e.where}")
        for n in self.notes:
            out.append(f"  note: {n}")
        if not self.dry_run:
            out.append(f"-> {self.checkpoint} (manifest {self.out / 'repair.json'})")
        return out
