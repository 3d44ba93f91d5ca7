"""Megatron-core's DistributedOptimizer buffers: where each parameter's Adam state sits in the flat
per-bucket tensors, and the pieces of a tensor-parallel parameter joined into one.

Facts (megatron-core 0.16, distributed/param_and_grad_buffer.py and distributed_data_parallel.py):
DDP gives each (param dtype, grad dtype) a buffer holding the trainable parameters of
`module.named_parameters()` in reverse order; each parameter starts at a multiple of 64 elements
(from the buffer start); a bucket ends after the parameter that fills it and is padded to a
multiple of lcm(DP, 128), so the state of a bucket is its `numel_unpadded` elements (intra-bucket
padding included) followed by padding. The optimizer's state tensors (`param` = the fp32 master
weights, `exp_avg`, `exp_avg_sq`) follow that layout. Walking it, `match` finds the parameter at
each aligned start by content: its saved model weights equal the master weights there (cast to
the model's dtype); `layout` places a given order and `check_weights` proves it the same way. A
slot no parameter fits, or that several identical ones fit, is refused, never read under a
guessed name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from adamscope.config import ReaderOptions
from adamscope.errors import CorruptCheckpointError, NamingError
from adamscope.readers.optim_state import hyper_params
from adamscope.vocab import HyperParams

PARAM_ALIGN = 64  # elements: each parameter starts 128-byte aligned (param_and_grad_buffer.py)
_SAMPLE = 64  # elements compared at each end of a slot against the saved model weight


@dataclass(frozen=True)
class Slot:
    """One parameter's range in a buffer's state tensors (coalesced over buckets)."""

    key: str  # the candidate's key (a name, or a (key, layer) label)
    start: int
    numel: int


def layout(params: Sequence[tuple[str, int]], buckets: Sequence[int], *, source: str) -> list[Slot]:
    """Slots of `params` ((key, numel) in buffer order) in tensors that hold the buckets'
    `numel_unpadded` elements one after the other (bucket b starts at the sum of those before).

    Raises:
        NamingError: the sizes do not fill the buckets exactly (another order, frozen or extra
            parameters, another megatron-core layout).
    """
    slots, bucket, base, pos = [], 0, 0, 0
    for key, numel in params:
        if numel == 0:
            continue
        if bucket >= len(buckets):
            raise NamingError(
                f"{source}: '{key}' has no room: the buckets ({list(buckets)} elements) are "
                "full before every parameter is placed"
            )
        start = -(-pos // PARAM_ALIGN) * PARAM_ALIGN
        end = start + numel
        if end > buckets[bucket]:
            raise NamingError(
                f"{source}: '{key}' ({numel} elements at {start}) runs past the end of bucket "
                f"{bucket} ({buckets[bucket]} elements): the parameters do not lay out as "
                "megatron-core lays them out"
            )
        slots.append(Slot(key, base + start, numel))
        pos = end
        if end == buckets[bucket]:
            base, bucket, pos = base + buckets[bucket], bucket + 1, 0
    if bucket != len(buckets) or pos:
        raise NamingError(
            f"{source}: the parameters fill {base + pos} elements of buckets holding "
            f"{sum(buckets)}: the parameters do not lay out as megatron-core lays them out"
        )
    return slots


def match(
    members: Sequence[tuple[str, int]],
    buckets: Sequence[int],
    master: Callable[[int, int], Any],
    weight: Callable[[str], Any],
    *,
    source: str,
) -> list[Slot]:
    """Slots of `members` ((key, numel), in no particular order) found by content: walking the
    buffers as megatron-core fills them, the parameter at each aligned start is the one whose saved
    model weights equal the master weights there (at both ends of its would-be slot, then whole
    when several parameters agree at the ends).

    Raises:
        NamingError: no parameter fits a slot, or several do whose saved weights are identical
            (e.g. norms still at 1.0 in bf16): the files cannot tell them apart.
    """
    import torch

    left = {k: n for k, n in members if n}
    # candidates by (numel, dtype, first elements' bytes): each slot looks up its few
    # candidates instead of comparing every parameter (linear, not quadratic, in parameters)
    index: dict[tuple[int, Any, bytes], list[str]] = {}
    tails: dict[str, Any] = {}
    for key, n in left.items():
        w = weight(key)
        head = w.read(0, min(n, _SAMPLE))
        tails[key] = w.read(max(0, n - _SAMPLE), n)
        index.setdefault((n, head.dtype, _bytes(head)), []).append(key)
    kinds = sorted({(n, dtype) for n, dtype, _ in index}, key=str)

    slots, base = [], 0
    for b, size in enumerate(buckets):
        pos = 0
        while pos < size:
            start = -(-pos // PARAM_ALIGN) * PARAM_ALIGN
            at, hits = base + start, []
            for n, dtype in kinds:
                if start + n > size:
                    continue
                head = master(at, at + min(n, _SAMPLE)).to(dtype)
                for key in index.get((n, dtype, _bytes(head)), ()):
                    tail = tails[key]
                    if key in left and torch.equal(
                        master(at + n - len(tail), at + n).to(dtype), tail
                    ):
                        hits.append(key)
            if len(hits) > 1:  # alike at both ends: compare them whole
                hits = [k for k in hits if _equal(master, weight(k), at, left[k])]
            if not hits:
                raise NamingError(
                    f"{source}: no parameter's saved weights match the master weights at element "
                    f"{base + start} (bucket {b}): the buffer does not lay out as megatron-core "
                    "lays it out, or a parameter is missing from the model keys"
                )
            if len(hits) > 1:
                shown = ", ".join(sorted(hits)[:4]) + (", ..." if len(hits) > 4 else "")
                raise NamingError(
                    f"{source}: at element {base + start} the master weights fit {len(hits)} "
                    f"parameters whose saved weights are identical ({shown}): the files cannot "
                    "tell them apart; pass --model with the parameter names in registration "
                    "order (a text file, one name per line)"
                )
            n = left.pop(hits[0])
            slots.append(Slot(hits[0], base + start, n))
            pos = start + n
        base += size
    missing = list(left)
    if missing:
        raise NamingError(
            f"{source}: {len(missing)} parameters have no slot in the buffers (first: "
            f"'{missing[0]}'): frozen parameters, or another megatron-core layout"
        )
    return slots


def _bytes(t: Any) -> bytes:
    """A 1-D tensor's raw bytes (bf16 has no numpy dtype: viewed as bytes first)."""
    import torch

    return t.contiguous().view(torch.uint8).numpy().tobytes()


def _equal(master: Callable[[int, int], Any], w: Any, at: int, n: int) -> bool:
    """Whether the saved weight `w` equals the master weights [at, at + n) (read in chunks)."""
    import torch

    step = 1 << 20
    for a in range(0, n, step):
        saved = w.read(a, min(n, a + step))
        if not torch.equal(master(at + a, at + a + len(saved)).to(saved.dtype), saved):
            return False
    return True


def check_weights(
    slots: Sequence[Slot],
    master: Callable[[int, int], Any],
    weight: Callable[[str], Any],
    *,
    source: str,
) -> None:
    """The fp32 master weights at each slot equal the saved model weight (in its dtype) at both
    ends of the slot: the proof that each slot holds the parameter it is named after.

    Args:
        master: (start, stop) -> elements of the buffer's `param` state tensor.
        weight: slot key -> the saved model weight (lazy, `numel`, `read(start, stop)`).

    Raises:
        NamingError: a slot's master weights are not its parameter's.
    """
    import torch

    for slot in slots:
        w = weight(slot.key)
        for a in sorted({0, max(0, slot.numel - _SAMPLE)}):
            b = min(slot.numel, a + _SAMPLE)
            saved = w.read(a, b)
            if not torch.equal(master(slot.start + a, slot.start + b).to(saved.dtype), saved):
                raise NamingError(
                    f"{source}: the master weights at elements {slot.start + a}..{slot.start + b}"
                    f" are not those of '{slot.key}' saved beside them: the parameter order does "
                    "not match the buffers (--model must list the names in registration order, "
                    "one per line; frozen parameters leave the buffers)"
                )


def group_hyper_params(
    groups: Any, *, source: str, options: ReaderOptions
) -> tuple[HyperParams, float, list[str]]:
    """(hyper-parameters, step, notes) of Megatron's param groups, which are saved without their
    `params` lists: a value the groups disagree on (weight decay of the no-decay group, a
    decoupled lr) cannot be given to a parameter, so it is left unknown (None) and noted.

    Raises:
        CorruptCheckpointError: no param groups, or groups that disagree on betas, eps or step.
    """
    if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
        raise CorruptCheckpointError(f"{source}: no optimizer param_groups")
    hps = [hyper_params(g, source=source, options=options) for g in groups]
    steps = {g.get("step") for g in groups}
    if len(steps) != 1 or None in steps:
        raise CorruptCheckpointError(
            f"{source}: param groups hold steps {sorted(map(str, steps))}, not one step"
        )
    first, notes, unknown = hps[0], [], {}
    for field in ("beta1", "beta2", "eps", "amsgrad", "bias_correction"):
        if len({getattr(h, field) for h in hps}) > 1:
            raise CorruptCheckpointError(
                f"{source}: param groups disagree on {field}; adamscope needs one value"
            )
    for field in ("lr", "weight_decay"):
        values = sorted({getattr(h, field) for h in hps}, key=str)
        if len(values) > 1:
            unknown[field] = None
            notes.append(
                f"{field} differs across the {len(groups)} param groups ({values}) and the "
                "groups' members are not saved: left unknown"
            )
    step = steps.pop()
    step = float(step.item() if hasattr(step, "item") else step)
    return replace(first, **unknown), step, notes


@dataclass(frozen=True)
class Piece:
    """One tensor-parallel rank's part of a parameter: its m and v as (start, stop) readers."""

    numel: int
    m: Callable[[int, int], Any]
    v: Callable[[int, int], Any]


def piece(m: Any, v: Any, slot: Slot) -> Piece:
    """The Piece of a slot in a buffer's m and v tensors (objects with `read(start, stop)`)."""
    s = slot.start
    return Piece(
        slot.numel, m=lambda a, b: m.read(s + a, s + b), v=lambda a, b: v.read(s + a, s + b)
    )


def stream(pieces: Sequence[Piece], n: int) -> Iterator[tuple]:
    """(start, m, v, None) chunks of at most n elements over the pieces one after the other."""
    offset = 0
    for p in pieces:
        for a in range(0, p.numel, n):
            b = min(a + n, p.numel)
            yield offset + a, p.m(a, b), p.v(a, b), None
        offset += p.numel


def joined_shape(shapes: Sequence[tuple[int, ...]], dim: int | None) -> tuple[int, ...]:
    """The logical shape of tensor-parallel shards joined along `dim` (None: replicated)."""
    if dim is None:
        return tuple(shapes[0])
    shape = list(shapes[0])
    shape[dim] = sum(s[dim] for s in shapes)
    return tuple(shape)


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)
