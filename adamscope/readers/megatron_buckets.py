"""Megatron-core torch_dist `dp_reshardable` optimizer state: flat per-bucket tensors, one set per
tensor-parallel rank (`optimizer.distributed.dp_group_idx_<k>`), named through megatron_layout.

Each bucket key (`...gbuf_idx_<g>.dtype_(<param dtype>, <grad dtype>).bucket_idx_<b>.<state>`)
is a DCP tensor of the bucket's `numel_unpadded` elements, saved as one chunk per parameter and
padding per DP rank; `per_bucket_numel_unpadded` and `optimizer` (the param_groups with `step`)
are pickled objects of the same group. With pipeline parallel 1 the group index is the tensor-
parallel rank (megatron-core's optimizer setup passes the model-parallel rank).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adamscope.errors import CorruptCheckpointError, NamingError, UnsupportedFormatError
from adamscope.readers import dcp
from adamscope.readers import megatron_layout as ml
from adamscope.vocab import TensorState

# the reader (readers/megatron.py, which imports this module) and its parameters, duck-typed
MegatronDistReader = _Param = Any

BUCKET = re.compile(
    r"^optimizer\.distributed\.dp_group_idx_(\d+)\.gbuf_idx_(\d+)\.dtype_\(torch\.(\w+), "
    r"torch\.(\w+)\)\.bucket_idx_(\d+)\.(param|exp_avg|exp_avg_sq)$"
)
OBJECT = re.compile(r"^optimizer\.distributed\.dp_group_idx_(\d+)\.(\w+)/shard_\d+_\d+$")


def local(chunk: dcp._Chunk, layer: int | None) -> tuple[int, ...]:
    """A chunk's shape without the stacked layer axis (when the key stacks layers)."""
    return tuple(chunk.sizes[1:] if layer is not None else chunk.sizes)


def small(entry: dcp._Entry) -> Any:
    """A pickled object entry, unwrapped from the one-element lists Megatron saves it in."""
    value = dcp.load_small(entry.chunks[0])
    while isinstance(value, list) and len(value) == 1 and isinstance(value[0], list | dict):
        value = value[0]
    return value


class _Flat:
    """A 1-D DCP tensor read by element ranges across its chunks."""

    def __init__(self, entry: dcp._Entry, *, source: Path) -> None:
        self.chunks = sorted(entry.chunks, key=lambda c: c.offsets)
        self.starts = [c.offsets[0] for c in self.chunks]
        position = 0
        for c in self.chunks:
            if len(c.offsets) != 1 or c.offsets[0] != position:
                raise CorruptCheckpointError(
                    f"{source}: chunks of '{entry.key}' do not tile it (a gap or an overlap at "
                    f"element {position})"
                )
            position += c.sizes[0]
        if (entry.size or (0,))[0] != position:
            raise CorruptCheckpointError(f"{source}: chunks of '{entry.key}' cover {position}")
        self.numel = position
        self._open: dict[int, Any] = {}

    def read(self, a: int, b: int) -> Any:
        import torch

        out, i = [], bisect.bisect_right(self.starts, a) - 1
        while a < b:
            lo = self.starts[i]
            hi = lo + self.chunks[i].sizes[0]
            if i not in self._open:
                self._open[i] = dcp.chunk_tensor(self.chunks[i])
            take = min(b, hi)
            out.append(self._open[i].read(a - lo, take - lo))
            a, i = take, i + 1
        return out[0] if len(out) == 1 else torch.cat(out)


class _Coalesced:
    """Several buckets' tensors as one, bucket after bucket (a slot never spans two)."""

    def __init__(self, flats: list[_Flat]) -> None:
        self.flats = flats
        self.bases = [sum(f.numel for f in flats[:i]) for i in range(len(flats))]

    def read(self, a: int, b: int) -> Any:
        i = bisect.bisect_right(self.bases, a) - 1
        return self.flats[i].read(a - self.bases[i], b - self.bases[i])


def _by_group(reader: MegatronDistReader) -> dict[int, dict[str, Any]]:
    """group index -> {"buckets": {(gbuf, param dtype): {bucket: {state: entry}}}, objects}."""
    groups: dict[int, dict[str, Any]] = {}
    for key, entry in reader.entries.items():
        if m := BUCKET.match(key):
            k, gbuf, pdtype, _, bucket, state = m.groups()
            g = groups.setdefault(int(k), {"buckets": {}, "objects": {}})
            by_bucket = g["buckets"].setdefault((int(gbuf), pdtype), {})
            by_bucket.setdefault(int(bucket), {})[state] = entry
        elif m := OBJECT.match(key):
            g = groups.setdefault(int(m[1]), {"buckets": {}, "objects": {}})
            g["objects"][m[2]] = entry
    if not groups or sorted(groups) != list(range(len(groups))):
        raise CorruptCheckpointError(
            f"{reader.folder}: dp_reshardable optimizer groups {sorted(groups)} (expected 0..N-1)"
        )
    return groups


def _order(reader: MegatronDistReader) -> list[_Param]:
    """The parameters to place: `--model`'s names list (registration order), or all of them (in
    no order: `match` places them by content)."""
    if reader.options.model is None:
        return reader.params
    from adamscope.readers import guard

    source = Path(reader.options.model)
    text = guard.bounded_read(source, limit=64 << 20, what="--model names list")
    try:
        names = [n.strip() for n in text.decode().splitlines() if n.strip()]
    except UnicodeDecodeError:
        raise NamingError(
            f"{source}: not a text file; for a Megatron checkpoint --model is a list of the "
            "parameter names in registration order, one per line"
        ) from None
    by_name = {p.name: p for p in reader.params}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise NamingError(
            f"{source}: {len(unknown)} names are not parameters of {reader.folder} "
            f"(first: '{unknown[0]}'); names look like '{reader.params[0].name}'"
        )
    return [by_name[n] for n in names]


def _slots(
    reader: MegatronDistReader, k: int, group: dict[str, Any], tp: int
) -> dict[str, tuple[_Coalesced, _Coalesced, ml.Slot]]:
    """name -> (m, v, slot) of every parameter in tensor-parallel rank k's buffers."""
    source = f"{reader.folder} (dp_group_idx_{k})"
    unpadded = _per_bucket(group["objects"].get("per_bucket_numel_unpadded"), source=source)
    order = _order(reader)
    out = {}
    for (gbuf, pdtype), buckets in sorted(group["buckets"].items()):
        if sorted(buckets) != list(range(len(buckets))):
            raise CorruptCheckpointError(f"{source}: buckets {sorted(buckets)} of buffer {gbuf}")
        sizes = _bucket_sizes(unpadded, gbuf, pdtype, source=source)
        states = _bucket_states(buckets, sizes, source=source, folder=reader.folder)
        members = [p for p in order if reader.entries[p.key].dtype == pdtype]
        shard = {p.name: _shard(p, k, tp, source=source) for p in members}
        sized = [(p.name, ml.numel(local(shard[p.name], p.layer))) for p in members]
        weights: dict[str, Any] = {}

        def weight(name: str, shard: dict = shard, weights: dict = weights) -> Any:
            if name not in weights:
                weights[name] = dcp.chunk_tensor(shard[name])
            return weights[name]

        if reader.options.model is None:  # by content
            slots = ml.match(sized, sizes, states["param"].read, weight, source=source)
        else:  # the order given: laid out, then checked
            slots = ml.layout(list(reversed(sized)), sizes, source=source)
            ml.check_weights(slots, states["param"].read, weight, source=source)
        for slot in slots:
            out[slot.key] = (states["exp_avg"], states["exp_avg_sq"], slot)
    return out


def _bucket_states(
    buckets: dict[int, dict[str, dcp._Entry]], sizes: list[int], *, source: str, folder: Path
) -> dict[str, _Coalesced]:
    """One buffer's param / exp_avg / exp_avg_sq, each its buckets one after the other."""
    states = {}
    for state in ("param", "exp_avg", "exp_avg_sq"):
        flats = []
        for b in range(len(buckets)):
            entry = buckets[b].get(state)
            if entry is None:
                raise CorruptCheckpointError(f"{source}: bucket {b} has no '{state}'")
            flats.append(_Flat(entry, source=folder))
        states[state] = _Coalesced(flats)
        if [f.numel for f in flats] != sizes:
            raise CorruptCheckpointError(
                f"{source}: bucket '{state}' tensors hold {[f.numel for f in flats]} elements, "
                f"per_bucket_numel_unpadded says {sizes}"
            )
    return states


def _shard(p: _Param, k: int, tp: int, *, source: str) -> dcp._Chunk:
    if len(p.shards) == 1:
        return p.shards[0]
    if len(p.shards) == tp:
        return p.shards[k]
    raise UnsupportedFormatError(
        f"{source}: '{p.name}' has {len(p.shards)} shards with {tp} tensor-parallel ranks"
    )


def _per_bucket(entry: dcp._Entry | None, *, source: str) -> list:
    if entry is None:
        raise CorruptCheckpointError(f"{source}: no per_bucket_numel_unpadded")
    value = small(entry)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise CorruptCheckpointError(f"{source}: per_bucket_numel_unpadded is not a list of dicts")
    return value


def _bucket_sizes(unpadded: list, gbuf: int, pdtype: str, *, source: str) -> list[int]:
    if gbuf >= len(unpadded):
        raise CorruptCheckpointError(f"{source}: no per_bucket_numel_unpadded for buffer {gbuf}")
    for dtypes, sizes in unpadded[gbuf].items():
        if isinstance(dtypes, tuple) and str(dtypes[0]) == f"torch.{pdtype}":
            if isinstance(sizes, list) and all(isinstance(n, int) and n >= 0 for n in sizes):
                return sizes
    raise CorruptCheckpointError(
        f"{source}: per_bucket_numel_unpadded has no sizes for buffer {gbuf} ({pdtype})"
    )


def dp_reshardable(reader: MegatronDistReader) -> Iterator[TensorState]:
    """The TensorStates of a dp_reshardable checkpoint, TP shards joined per parameter."""
    groups = _by_group(reader)
    tp = len(groups)
    declared = reader.args.get("tensor_model_parallel_size")
    if isinstance(declared, int) and declared != tp:
        raise CorruptCheckpointError(
            f"{reader.folder}: {tp} optimizer groups, args say tensor parallel {declared}"
        )
    steps, hps = set(), []
    for k, group in groups.items():
        entry = group["objects"].get("optimizer")
        value = small(entry) if entry is not None else None
        param_groups = value.get("param_groups") if isinstance(value, dict) else None
        hp, step, notes = ml.group_hyper_params(
            param_groups, source=f"{reader.folder} (dp_group_idx_{k})", options=reader.options
        )
        steps.add(step)
        hps.append(hp)
    if len(steps) != 1:
        raise CorruptCheckpointError(f"{reader.folder}: tensor-parallel ranks at steps {steps}")
    reader.notes = notes
    slots = [_slots(reader, k, groups[k], tp) for k in range(tp)]
    # registration order: rank 0's buffers in reverse (megatron-core fills them backwards)
    position = {name: -slot.start for name, (_, _, slot) in slots[0].items()}
    step = steps.pop()
    for p in sorted(reader.params, key=lambda p: position.get(p.name, 1)):
        ranks = range(tp) if len(p.shards) == tp and tp > 1 else [0]
        pieces = []
        for k in ranks:
            if p.name not in slots[k]:
                raise NamingError(f"{reader.folder}: '{p.name}' has no slot in rank {k}'s buffers")
            m, v, slot = slots[k][p.name]
            pieces.append(ml.piece(m, v, slot))
        yield reader.tensor_state(p, hps[0], step, lambda n, pc=pieces: ml.stream(pc, n))
