"""Megatron-LM's legacy `--ckpt-format torch` checkpoints with the distributed optimizer:
`iter_NNNNNNN/mp_rank_XX/{model_optim_rng.pt, distrib_optim.pt}`, one folder per tensor-parallel
rank (pipeline parallel adds `_PPP`: not read).

`model_optim_rng.pt` (torch.save on DP rank 0, restricted unpickler): `model` (the rank's model
state dict: names in registration order, TP-local shapes, bf16/fp32 weights), `optimizer` (the
DistributedOptimizer's state_dict: param_groups without `params`, with `step`), `args`,
`iteration`. `distrib_optim.pt` (DistributedOptimizer.save_parameter_state): `{"buckets_coalesced":
True, <buffer index>: {(param dtype, grad dtype): {"param", "exp_avg", "exp_avg_sq": fp32 tensors
of the buffer's buckets one after the other, "numel_unpadded"}}}`, laid out by megatron_layout's
rule over the model state dict's order. Tensor-parallel shards are joined along the dim that
megatron-core's layer classes split: column-parallel (`word_embeddings`, `linear_qkv`, `linear_fc1`,
`output_layer`: dim 0) and row-parallel (`linear_proj`, `linear_fc2` weights: dim 1); any other
parameter must be the same on every rank (replicated), else it is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adamscope.config import ReaderOptions
from adamscope.errors import CorruptCheckpointError, UnsupportedFormatError
from adamscope.readers import megatron_layout as ml
from adamscope.readers.naming import is_tensor_like
from adamscope.vocab import CheckpointInfo, TensorState

_RANK = re.compile(r"^mp_rank_(\d{2})(_\d{3})?$")
_MODEL, _OPTIM = "model_optim_rng.pt", "distrib_optim.pt"
_COLUMN = ("word_embeddings.weight", "linear_qkv.weight", "linear_qkv.bias", "linear_fc1.weight")
_COLUMN += ("linear_fc1.bias", "output_layer.weight", "output_layer.bias")
_ROW = ("linear_proj.weight", "linear_fc2.weight")


def _rank_folders(path: Path) -> list[Path]:
    if not path.is_dir():
        return []
    return sorted(c for c in path.iterdir() if _RANK.match(c.name) and (c / _MODEL).is_file())


def _iteration_folder(path: Path) -> Path | None:
    """The `iter_N/` folder of `path`: itself, or the one above a rank folder or its files (every
    tensor-parallel rank is read, whichever one was named)."""
    if path.name in (_MODEL, _OPTIM) and path.is_file():
        path = path.parent
    if _RANK.match(path.name) and (path / _MODEL).is_file():
        path = path.parent
    return path if _rank_folders(path) else None


def _load(path: Path, options: ReaderOptions) -> Any:
    from adamscope.readers.torchzip import load_lazy

    tree = load_lazy(path, trust_pickle=options.trust_pickle)
    if not isinstance(tree, dict):
        raise CorruptCheckpointError(f"{path}: not a dict")
    return tree


class MegatronLegacyReader:
    """A Megatron-LM `--ckpt-format torch` iteration folder (distributed optimizer)."""

    name = "megatron-legacy"

    @classmethod
    def probe(cls, path: Path) -> bool:
        return _iteration_folder(Path(path)) is not None

    def __init__(self, path: Path, *, options: ReaderOptions) -> None:
        self.path = Path(path)
        self.options = options
        folder = _iteration_folder(self.path)
        if folder is None:
            raise UnsupportedFormatError(f"{self.path}: no mp_rank_XX/{_MODEL} (not Megatron-LM)")
        self.folder = folder
        ranks = _rank_folders(self.folder)
        if any(_RANK.match(r.name)[2] for r in ranks):
            raise UnsupportedFormatError(
                f"{self.folder}: pipeline-parallel folders ({ranks[0].name}, ...); adamscope "
                "reads pipeline parallel 1 only"
            )
        numbers = [int(_RANK.match(r.name)[1]) for r in ranks]
        if numbers != list(range(len(ranks))):
            raise CorruptCheckpointError(
                f"{self.folder}: tensor-parallel folders {numbers} (expected mp_rank_00.."
                f"{len(ranks) - 1:02d}): a rank's folder is missing"
            )
        self.ranks = ranks
        for r in ranks:
            if not (r / _OPTIM).is_file():
                raise UnsupportedFormatError(
                    f"{r}: no {_OPTIM}: the optimizer state sits in {_MODEL} (a run without "
                    "--use-distributed-optimizer); not supported yet"
                )
        self.states = [_load(r / _MODEL, options) for r in ranks]
        self.models = [self._model(r, s) for r, s in zip(ranks, self.states, strict=True)]
        args = self.states[0].get("args")
        self.args = args.attrs() if hasattr(args, "attrs") else {}
        self.tp = len(ranks)
        self.dims = {n: self._dim(n) for n in self.models[0]}

    def _model(self, folder: Path, state: dict) -> dict[str, Any]:
        """The rank's trainable-looking tensors (floating point, no `_extra_state`), in order."""
        model = state.get("model")
        if not isinstance(model, dict):
            raise CorruptCheckpointError(f"{folder / _MODEL}: no 'model' state dict")
        return {
            k: t
            for k, t in model.items()
            if is_tensor_like(t) and t.dtype.is_floating_point and "_extra_state" not in k
        }

    def _dim(self, name: str) -> int | None:
        """The dim tensor-parallel ranks split `name` along (None: replicated)."""
        if self.tp == 1:
            return None
        missing = [r.name for r, m in zip(self.ranks, self.models, strict=True) if name not in m]
        if missing:
            raise CorruptCheckpointError(f"{self.folder}: '{name}' is missing from {missing[0]}")
        if name.endswith(_COLUMN):
            return 0
        if name.endswith(_ROW):
            return 1
        first = self.models[0][name]
        for r, m in zip(self.ranks[1:], self.models[1:], strict=True):
            t = m[name]
            same = tuple(t.shape) == tuple(first.shape)
            if same:
                n = min(first.numel, 256)
                same = bool((t.read(0, n) == first.read(0, n)).all())
            if not same:
                raise UnsupportedFormatError(
                    f"{r / _MODEL}: '{name}' differs between tensor-parallel ranks and is not a "
                    "layer whose split dim adamscope knows; convert the checkpoint to torch_dist"
                )
        return None

    def describe(self) -> CheckpointInfo:
        iteration = self.states[0].get("iteration")
        numel = sum(ml.numel(self._shape(n)) for n in self.models[0])
        return CheckpointInfo(
            path=self.path,
            format=self.name,
            step=iteration if isinstance(iteration, int) else None,
            n_tensors=len(self.models[0]),
            n_params=numel,
            bytes_on_disk=sum(p.stat().st_size for r in self.ranks for p in r.iterdir()),
            notes=(f"Megatron-LM legacy torch format, tensor parallel {self.tp}",),
        )

    def _shape(self, name: str) -> tuple[int, ...]:
        return ml.joined_shape([tuple(m[name].shape) for m in self.models], self.dims[name])

    def _slots(self, k: int) -> dict[str, tuple[Any, Any, ml.Slot]]:
        """name -> (m, v, slot) over rank k's distrib_optim.pt buffers."""
        source = self.ranks[k] / _OPTIM
        tree = _load(source, self.options)
        if tree.get("buckets_coalesced") is not True:
            raise UnsupportedFormatError(
                f"{source}: buckets not coalesced (an older megatron-core layout); not supported"
            )
        model, out = self.models[k], {}
        for gbuf in sorted(k for k in tree if isinstance(k, int)):
            by_dtype = tree[gbuf]
            if not isinstance(by_dtype, dict) or len(by_dtype) != 1:
                raise CorruptCheckpointError(f"{source}: buffer {gbuf} is not one dtype entry")
            ((dtypes, world),) = by_dtype.items()
            if not isinstance(world, dict) or not all(
                is_tensor_like(world.get(s)) for s in ("param", "exp_avg", "exp_avg_sq")
            ):
                raise CorruptCheckpointError(
                    f"{source}: buffer {gbuf} lacks param/exp_avg/exp_avg_sq"
                )
            members = [n for n, t in model.items() if t.dtype == dtypes[0]]
            slots = ml.layout(
                [(n, model[n].numel) for n in reversed(members)],
                [world["param"].numel],
                source=str(source),
            )
            ml.check_weights(slots, world["param"].read, model.__getitem__, source=str(source))
            for slot in slots:
                out[slot.key] = (world["exp_avg"], world["exp_avg_sq"], slot)
        return out

    def iter_tensors(self) -> Iterator[TensorState]:
        optimizer = self.states[0].get("optimizer")
        inner = optimizer.get("optimizer") if isinstance(optimizer, dict) else None
        groups = inner.get("param_groups") if isinstance(inner, dict) else None
        hp, step, notes = ml.group_hyper_params(
            groups, source=str(self.ranks[0] / _MODEL), options=self.options
        )
        slots = [self._slots(k) for k in range(self.tp)]
        for name in self.models[0]:
            ranks = range(self.tp) if self.dims[name] is not None else [0]
            pieces = []
            for k in ranks:
                if name not in slots[k]:
                    raise CorruptCheckpointError(
                        f"{self.ranks[k] / _OPTIM}: no optimizer state for '{name}'"
                    )
                m, v, slot = slots[k][name]
                pieces.append(ml.piece(m, v, slot))
            ts = TensorState(
                name=name,
                shape=self._shape(name),
                step=step,
                hp=hp,
                dtype="float32",
                chunks=lambda n, pc=pieces: ml.stream(pc, n),
            )
            if self.dims[name] not in (None, 0):
                ts.notes.append(
                    f"tensor-parallel shards split dim {self.dims[name]}: chunks follow the shards"
                )
            ts.notes.extend(notes)
            yield ts
