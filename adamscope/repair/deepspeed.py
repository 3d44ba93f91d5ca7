"""DeepSpeed ZeRO 1/2/3 checkpoints: every rank's `*_optim_states.pt` holds flat exp_avg /
exp_avg_sq partitions of whole parameter groups; a parameter is a fragment of each (stage 1/2: a
range of one or two ranks' partitions; stage 3: a chunk on every rank). The deepspeed reader says
where each fragment lies; repair zeroes exactly those element ranges (padding and the other
parameters' ranges stay as they are) in a copy of every rank file, and sets eps in every rank's
inner optimizer param groups, which `load_checkpoint` restores.

DeepSpeed keeps one step per parameter group, not per tensor: `--reset-step` is refused. The
`ds_config` recorded in the model-states file is left as it was (it is the run's configuration,
not the optimizer's state).
"""

from __future__ import annotations

from typing import Any

from adamscope.errors import UnsupportedFormatError
from adamscope.repair.plan import EpsSlot, Layout, TensorSlots
from adamscope.repair.torch_file import lazy_zero, window_of
from adamscope.repair.zippatch import Edit


def _fragments(reader: Any, stage: int, outers: list, inners: list) -> dict[str, list]:
    """name -> the deepspeed reader's fragments of it (the reader's own layout functions)."""
    from adamscope.readers.naming import strip_compile_prefix

    psms = [o.get("param_slice_mappings") for o in outers]
    use_psm = stage != 3 and all(isinstance(m, list) for m in psms)
    pads = outers[0].get("param_alignment_paddings")
    out: dict[str, list] = {}
    for j, shapes in enumerate(reader.param_shapes):
        states = [inner["state"].get(j) for inner in inners]
        if any(s is None for s in states):
            continue  # no state on some rank (the reader skips it too, with a warning)
        if stage == 3:  # one layout per tensor, its fragments made on demand
            layouts = list(reader._stage3_fragments(shapes, states))
        elif use_psm:
            layouts = [reader._mapped_fragments(shapes, states, [m[j] for m in psms])]
        else:
            group_pads = pads[j] if isinstance(pads, list) and j < len(pads) else None
            layouts = [reader._flat_fragments(shapes, states, group_pads)]
        for name, _shape, frags in (t for found in layouts for t in found):
            out[strip_compile_prefix(name)] = frags() if callable(frags) else frags
    return out


def layout(reader: Any) -> Layout:
    """The Layout of a DeepSpeedReader's checkpoint (the tag folder, and `latest` beside it)."""
    from adamscope.repair.output import checkpoint_files

    outers, inners, stage = reader._rank_states()
    tensors: dict[str, TensorSlots] = {}
    for name, frags in _fragments(reader, stage, outers, inners).items():
        moments: dict[str, list[Edit]] = {}
        for f in frags:
            for key, t in (("exp_avg", f.m), ("exp_avg_sq", f.v), ("max_exp_avg_sq", f.vmax)):
                if t is not None:
                    what = f"'{name}' {key} fragment"
                    edit = lazy_zero(
                        t, source=str(t.archive.path), what=what, start=f.start, count=f.count
                    )
                    moments.setdefault(key, []).append(edit)
        tensors[name] = TensorSlots(
            name=name,
            numel=sum(f.count for f in frags),
            moments=moments,
            step_note="DeepSpeed keeps one step per parameter group, not per tensor",
        )
    inner_key = "optimizer_state_dict" if stage == 3 else "base_optimizer_state"
    eps = []
    for f, inner in zip(reader.optim_files, inners, strict=True):
        for g in range(len(inner["param_groups"])):
            eps.append(
                EpsSlot(
                    label=f"{f.name} param_groups[{g}]",
                    window=window_of(f),
                    path=("optimizer_state_dict", inner_key, "param_groups", g, "eps"),
                )
            )
    root = reader.path
    notes = []
    if reader.folder == root:
        files = checkpoint_files(root)
    else:  # a run folder: `latest` and the tag it names; other tags are not this checkpoint
        files = [p for p in sorted(root.iterdir()) if p.is_file()]
        files += checkpoint_files(reader.folder)
        skipped = [p.name for p in sorted(root.iterdir()) if p.is_dir() and p != reader.folder]
        if skipped:
            notes.append(f"not copied (not the checkpoint `latest` names): {', '.join(skipped)}")
    if not tensors:
        raise UnsupportedFormatError(f"{reader.folder}: no parameter state found to repair")
    return Layout(
        format=reader.name,
        root=root,
        files=files,
        tensors=tensors,
        eps=eps,
        step=reader.describe().step,
        notes=notes,
    )  # no trees: fragments are ranges of flat partitions by design (no shared-storage check)
