"""Megatron-core `torch_dist` checkpoints (`iter_NNNNNNN/` with `.metadata`, `__R_K.distcp`,
`common.pt`, `metadata.json`), with the DistributedOptimizer's two sharding types.

The folder is a DCP folder (readers/dcp.py reads its metadata and chunks). Model keys are
Megatron's sharded keys: the transformer layers are stacked on a leading axis
(`decoder.layers.mlp.linear_fc1.weight` is (L, ...), one chunk per layer and tensor-parallel
rank), split back here into `decoder.layers.<i>.mlp.linear_fc1.weight`. `common.pt` (restricted
unpickler) holds the training args, the sharding type (`content_metadata`) and, for
fully_reshardable, the optimizer's param_groups (saved without `params`).
- fully_reshardable (`--dist-ckpt-optim-fully-reshardable`): `optimizer.state.{exp_avg,exp_avg_sq,
  param}.<model key>`, shaped and sharded like the model key.
- dp_reshardable (the default): per tensor-parallel rank (`dp_group_idx_<k>`) and bucket one flat
  fp32 tensor per state; `per_bucket_numel_unpadded` and the param_groups (with `step`) are
  pickled objects. No names: megatron_layout finds each parameter's slot by content (the master
  weights there equal its saved model weights), or lays out `--model`'s names list and checks it.
`.metadata` lists the keys in no model order under Megatron-LM's default fully parallel save (each
DP rank writes some tensors), so it is never taken as the registration order.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adamscope.config import ReaderOptions
from adamscope.errors import (
    AdamscopeError,
    CorruptCheckpointError,
    NamingError,
    UnsupportedFormatError,
)
from adamscope.readers import dcp
from adamscope.readers import megatron_layout as ml
from adamscope.readers.megatron_buckets import BUCKET, dp_reshardable, local
from adamscope.vocab import CheckpointInfo, HyperParams, TensorState

log = logging.getLogger(__name__)

_FULL = re.compile(r"^optimizer\.state\.(exp_avg|exp_avg_sq|param)\.(.+)$")
_STACKED = re.compile(r"^(?P<head>(?:.+\.)?layers)\.(?P<rest>\D.*)$")


def is_megatron_dist(path: Path) -> bool:
    return (
        dcp.is_dcp_folder(path)
        and (path / "common.pt").is_file()
        and (path / "metadata.json").is_file()
    )


@dataclass(frozen=True)
class _Param:
    """One logical parameter: its model key, layer (of a stacked key) and per-TP-rank chunks."""

    name: str
    key: str
    layer: int | None
    shards: tuple[dcp._Chunk, ...]  # sorted by offsets: TP rank k holds shards[k] (or shards[0])
    dim: int | None  # the dim (of the per-layer tensor) the shards split; None: replicated

    @property
    def shape(self) -> tuple[int, ...]:
        return ml.joined_shape([local(c, self.layer) for c in self.shards], self.dim)


class MegatronDistReader:
    """A Megatron-core torch_dist checkpoint holding DistributedOptimizer state."""

    name = "megatron-torch-dist"

    @classmethod
    def probe(cls, path: Path) -> bool:
        return is_megatron_dist(Path(path))

    def __init__(self, path: Path, *, options: ReaderOptions) -> None:
        self.path = self.folder = Path(path)
        self.options = options
        self.notes: list[str] = []
        meta = _json(self.folder / "metadata.json")
        if meta.get("sharded_backend") != "torch_dist":
            raise UnsupportedFormatError(
                f"{self.folder / 'metadata.json'}: sharded_backend "
                f"{meta.get('sharded_backend')!r}; adamscope reads Megatron's torch_dist"
            )
        self.entries = dcp.read_metadata(self.folder)
        self.common = _common(self.folder / "common.pt", options)
        self.sharding = _sharding(self.common, self.entries, source=self.folder)
        args = self.common.get("args")
        self.args = args.attrs() if hasattr(args, "attrs") else {}
        pp = self.args.get("pipeline_model_parallel_size")
        if isinstance(pp, int) and pp > 1:
            raise UnsupportedFormatError(
                f"{self.folder}: pipeline-parallel run (pipeline_model_parallel_size {pp}); "
                "adamscope reads pipeline parallel 1 only"
            )
        self.params = self._params()

    def _params(self) -> list[_Param]:
        """The model's parameters in registration order (stacked keys expanded per layer)."""
        model = {
            k: e
            for k, e in self.entries.items()
            if not k.startswith("optimizer.") and e.size is not None and "_extra_state" not in k
        }
        if any("experts" in k for k in model):
            raise UnsupportedFormatError(
                f"{self.folder}: a mixture-of-experts model (expert keys stacked on two axes); "
                "not supported yet"
            )
        out: list[_Param] = []
        done: set[str] = set()
        for key in model:
            match = _STACKED.match(key)
            if match is None or not model[key].size:
                out.append(self._param(key, key, None, model[key].chunks))
                continue
            head = match["head"]
            if head in done:
                continue
            done.add(head)
            block = [
                k for k in model if (m := _STACKED.match(k)) and m["head"] == head and model[k].size
            ]
            layers = {model[k].size[0] for k in block}
            # the layers the chunks hold (never range(size): a size of 10**12 must not loop)
            held = sorted({c.offsets[0] for k in block for c in model[k].chunks})
            if len(layers) != 1 or held != list(range(len(held))) or len(held) != min(layers):
                raise CorruptCheckpointError(
                    f"{self.folder}: keys under '{head}' stack {sorted(layers)} layers and their "
                    f"chunks hold {len(held)}"
                )
            for i in held:
                for k in block:
                    chunks = [c for c in model[k].chunks if c.offsets[0] == i]
                    if any(c.sizes[0] != 1 for c in chunks):
                        raise UnsupportedFormatError(
                            f"{self.folder}: '{k}' is not one chunk per layer"
                        )
                    rest = _STACKED.match(k)["rest"]
                    out.append(self._param(f"{head}.{i}.{rest}", k, i, chunks))
        return out

    def _param(self, name: str, key: str, layer: int | None, chunks: Any) -> _Param:
        shards = tuple(sorted(chunks, key=lambda c: c.offsets))
        if not shards:
            raise CorruptCheckpointError(f"{self.folder}: no chunk of '{key}' for {name}")
        dims = {d for c in shards for d, o in enumerate(c.offsets) if o != shards[0].offsets[d]}
        if len(dims) > 1:
            raise UnsupportedFormatError(
                f"{self.folder}: '{key}' is split along several dims {sorted(dims)}"
            )
        dim = dims.pop() - (layer is not None) if dims else None
        return _Param(name, key, layer, shards, dim)

    def describe(self) -> CheckpointInfo:
        tp = max([len(p.shards) for p in self.params] + [1])
        iteration = self.common.get("iteration")
        return CheckpointInfo(
            path=self.path,
            format=self.name,
            step=iteration if isinstance(iteration, int) else None,
            n_tensors=len(self.params),
            n_params=sum(ml.numel(p.shape) for p in self.params),
            bytes_on_disk=sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file()),
            notes=(
                f"Megatron-core torch_dist, DistributedOptimizer {self.sharding}, "
                f"tensor parallel {max(tp, int(self.args.get('tensor_model_parallel_size') or 1))}",
            ),
        )

    def iter_tensors(self) -> Iterator[TensorState]:
        if self.sharding == "fully_reshardable":
            yield from self._fully_reshardable()
        else:
            yield from dp_reshardable(self)

    def tensor_state(self, p: _Param, hp: HyperParams, step: float, chunks: Any) -> TensorState:
        ts = TensorState(
            name=p.name, shape=p.shape, step=step, hp=hp, dtype="float32", chunks=chunks
        )
        if p.dim not in (None, 0):
            ts.notes.append(f"tensor-parallel shards split dim {p.dim}: chunks follow the shards")
        ts.notes.extend(self.notes)
        return ts

    def _fully_reshardable(self) -> Iterator[TensorState]:
        optimizer = self.common.get("optimizer")
        inner = optimizer.get("optimizer") if isinstance(optimizer, dict) else None
        groups = inner.get("param_groups") if isinstance(inner, dict) else None
        hp, step, notes = ml.group_hyper_params(
            groups, source=str(self.folder / "common.pt"), options=self.options
        )
        self.notes = notes
        for p in self.params:
            m = self.entries.get(f"optimizer.state.exp_avg.{p.key}")
            v = self.entries.get(f"optimizer.state.exp_avg_sq.{p.key}")
            if m is None and v is None:
                log.warning(
                    "%s: no optimizer state for '%s' (frozen?); skipped", self.folder, p.name
                )
                continue
            if m is None or v is None:
                raise CorruptCheckpointError(
                    f"{self.folder}: no optimizer.state.exp_avg/exp_avg_sq for model key '{p.key}'"
                )
            pieces = []
            by_offset = {c.offsets: c for c in v.chunks}
            position = 0
            for c in sorted(m.chunks, key=lambda c: c.offsets):
                if p.layer is not None and c.offsets[0] != p.layer:
                    continue
                other = by_offset.get(c.offsets)
                if other is None or other.sizes != c.sizes:
                    raise CorruptCheckpointError(
                        f"{self.folder}: '{v.key}' is not sharded like '{m.key}'"
                    )
                pieces.append((position, c, other, None))
                position += ml.numel(c.sizes)
            if position != ml.numel(p.shape):
                raise CorruptCheckpointError(
                    f"{self.folder}: chunks of '{m.key}' for {p.name} cover {position} elements, "
                    f"the parameter has {ml.numel(p.shape)}"
                )
            yield self.tensor_state(p, hp, step, lambda n, pc=pieces: dcp._stream(pc, n))


def _json(path: Path) -> dict:
    from adamscope.readers import guard

    data = guard.bounded_read(path, limit=1 << 20, what="Megatron metadata.json")
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptCheckpointError(f"{path}: not JSON ({e})") from None
    if not isinstance(value, dict):
        raise CorruptCheckpointError(f"{path}: not a JSON object")
    return value


def _common(path: Path, options: ReaderOptions) -> dict:
    """common.pt: the state dict's non-sharded part (args, iteration, optimizer param_groups)."""
    from adamscope.readers.torchzip import load_lazy

    try:
        tree = load_lazy(path, trust_pickle=options.trust_pickle)
    except AdamscopeError:
        raise
    if not isinstance(tree, dict):
        raise CorruptCheckpointError(f"{path}: not a dict (a Megatron common.pt is)")
    return tree


def _sharding(common: dict, entries: dict, *, source: Path) -> str:
    content = common.get("content_metadata")
    kind = content.get("distrib_optim_sharding_type") if isinstance(content, dict) else None
    optimizer = common.get("optimizer")
    if kind is None and isinstance(optimizer, dict):
        kind = optimizer.get("param_state_sharding_type")
    if kind is None:
        if any(_FULL.match(k) for k in entries):
            kind = "fully_reshardable"
        elif any(BUCKET.match(k) for k in entries):
            kind = "dp_reshardable"
        else:
            raise UnsupportedFormatError(
                f"{source}: Megatron checkpoint without DistributedOptimizer state (a model-only "
                "save, --no-save-optim, or a non-distributed optimizer)"
            )
    if kind not in ("fully_reshardable", "dp_reshardable"):
        raise UnsupportedFormatError(
            f"{source}: DistributedOptimizer sharding type {kind!r}; adamscope reads "
            "fully_reshardable and dp_reshardable"
        )
    return kind


__all__ = ["MegatronDistReader", "NamingError", "is_megatron_dist"]
