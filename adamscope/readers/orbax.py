"""Orbax checkpoints of optax Adam/AdamW state (JAX: MaxText, Flax trainers), read slice by slice
with tensorstore (`pip install "adamscope[jax]"`; jax itself is not needed).

Layout (orbax-checkpoint 0.12, fixtures/make_orbax.py): a run folder of `<step>/` folders, each
with `_CHECKPOINT_METADATA` and one folder per item (`default/` for StandardSave). An item holds
`_METADATA` (JSON: `tree_metadata` keyed by tree paths such as ('opt_state', '0', 'mu', 'embed',
'embedding')) and the arrays as zarr (v2, or v3 with `zarr.json`), stored under the key
'.'.join(path): in an OCDBT database (`manifest.ocdbt`, `ocdbt.process_<P>/`; the default) or
as one folder per array (`use_ocdbt=False`). optax's ScaleByAdamState stores `count` (the step,
already incremented), `mu` and `nu` only, with torch's bias correction: betas and eps come from
--beta1/--beta2/--eps. Memory: tensorstore decodes whole zarr chunks (Orbax writes one chunk per
shard unless `chunk_byte_size` is set); one decoded chunk per array is cached while its slices
are read, so a read costs one chunk plus the slice.
"""

from __future__ import annotations

import ast
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adamscope.config import ReaderOptions
from adamscope.errors import (
    AdamscopeError,
    CorruptCheckpointError,
    NotAdamError,
    UnsupportedFormatError,
)
from adamscope.readers import guard
from adamscope.readers.base import inside
from adamscope.readers.dcp_safetensors import options_hyper_params
from adamscope.readers.safetensors_io import flat_slices
from adamscope.vocab import CheckpointInfo, HyperParams, TensorState

log = logging.getLogger(__name__)

METADATA = "_METADATA"
STEP_METADATA = "_CHECKPOINT_METADATA"
INSTALL = 'pip install "adamscope[jax]"  (tensorstore)'
_MAX_FILES = 1_000_000  # an item folder lists its arrays' chunk files (or a few OCDBT files)
_DTYPES = {"float32": "float32", "float64": "float64", "float16": "float16", "bfloat16": "bfloat16"}


def _tree_paths(item: Path) -> dict[tuple[str, ...], dict[str, Any]] | None:
    """tree path -> value metadata of an item's `_METADATA`, None when it is not an Orbax item."""
    if not (item / METADATA).is_file():
        return None
    meta = guard.read_json(item / METADATA, what="Orbax _METADATA")
    tree = meta.get("tree_metadata") if isinstance(meta, dict) else None
    if not isinstance(tree, dict):
        raise CorruptCheckpointError(f"{item / METADATA}: no 'tree_metadata' object")
    out = {}
    for key, value in tree.items():
        keys = value.get("key_metadata") if isinstance(value, dict) else None
        if isinstance(keys, list) and all(isinstance(k, dict) for k in keys):
            path = tuple(str(k.get("key")) for k in keys)
        else:  # older files: the key is the tuple's repr
            try:
                path = tuple(str(k) for k in ast.literal_eval(key))
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                raise CorruptCheckpointError(
                    f"{item / METADATA}: tree path {key[:80]!r} is not a tuple of keys"
                ) from None
        meta_value = value.get("value_metadata") if isinstance(value, dict) else None
        out[path] = meta_value if isinstance(meta_value, dict) else {}
    return out


def _adam_paths(paths: dict[tuple[str, ...], Any]) -> dict[tuple[str, ...], list[tuple[str, ...]]]:
    """prefix of an optax Adam state (the path up to 'mu') -> its parameter paths."""
    out: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    for path in paths:
        for i, key in enumerate(path):
            if key == "mu" and (*path[:i], "count") in paths:
                out.setdefault(path[:i], []).append(path[i + 1 :])
                break
    return out


def _items(path: Path) -> list[Path]:
    """The Orbax item folders at `path`: itself, or the items of a step folder."""
    if (path / METADATA).is_file():
        return [path]
    # a step folder (`_CHECKPOINT_METADATA` beside its items, or inside them for a Checkpointer)
    return sorted(p for p in path.iterdir() if p.is_dir() and (p / METADATA).is_file())


def _find_item(path: Path) -> tuple[Path, dict[tuple[str, ...], Any]] | None:
    for item in _items(path):
        paths = _tree_paths(item)
        if paths and _adam_paths(paths):
            return item, paths
    return None


def _require_tensorstore(source: Path) -> Any:
    try:
        import tensorstore
    except ImportError:
        raise UnsupportedFormatError(
            f"{source}: an Orbax checkpoint; reading it needs tensorstore: {INSTALL}"
        ) from None
    return tensorstore


def _check_files(item: Path) -> int:
    """Every file under the item is a regular file inside it (symlinks followed: none may lead
    out, no FIFO or device, which tensorstore would block on); returns their total size."""
    total, count = 0, 0
    for root, dirs, files in os.walk(item, followlinks=False):
        for name in dirs:
            inside(item, Path(root) / name, source=item)
        for name in files:
            count += 1
            if count > _MAX_FILES:
                raise CorruptCheckpointError(f"{item}: more than {_MAX_FILES} files")
            p = inside(item, Path(root) / name, source=item)
            total += guard.regular_file(p, what="Orbax checkpoint file")
    return total


class OrbaxReader:
    """optax Adam/AdamW state in an Orbax checkpoint (a step folder or its item folder)."""

    name = "orbax"

    @classmethod
    def probe(cls, path: Path) -> bool:
        path = Path(path)
        if not path.is_dir():
            return False
        try:
            return _find_item(path) is not None
        except AdamscopeError:
            return (path / METADATA).is_file() or (path / STEP_METADATA).is_file()

    def __init__(self, path: Path, *, options: ReaderOptions) -> None:
        self.path = Path(path)
        self.options = options
        found = _find_item(self.path)
        if found is None:
            raise UnsupportedFormatError(
                f"{self.path}: no Orbax item with an optax Adam state (tree paths "
                "'<...>/count', '<...>/mu/<param>', '<...>/nu/<param>')"
            )
        self.item, paths = found
        states = _adam_paths(paths)
        if len(states) > 1:
            where = ", ".join("/".join(p) for p in states)
            raise UnsupportedFormatError(
                f"{self.item}: several optax Adam states ({where}); adamscope reads one"
            )
        ((self.prefix, params),) = states.items()
        missing = [p for p in params if (*self.prefix, "nu", *p) not in paths]
        if missing:
            raise NotAdamError(
                f"{self.item}: optax state {'/'.join(self.prefix)} has mu but no nu for "
                f"'{'.'.join(missing[0])}' (Lion, or momentum only): not Adam"
            )
        self.names = [".".join(p) for p in params]
        self._params = dict(zip(self.names, params, strict=True))
        self.ts = _require_tensorstore(self.item)
        self.data_bytes = _check_files(self.item)
        self.ocdbt = (self.item / "manifest.ocdbt").is_file()

    def _key(self, *parts: str) -> str:
        return ".".join((*self.prefix, *parts))

    def _open(self, key: str, *, cached: bool = True) -> Any:
        """The tensorstore array stored under `key` (zarr v2 or v3, OCDBT or plain files); with
        `cached`, a cache of one decoded chunk (its slices are read one after another)."""
        ts = self.ts
        if self.ocdbt:
            kvstore = {
                "driver": "ocdbt",
                "base": f"file://{self.item.resolve()}",
                "path": key + "/",
            }
            zarr3 = self._ocdbt_has(f"{key}/zarr.json")
        else:
            folder = inside(self.item, self.item / key, source=self.item)
            kvstore = {"driver": "file", "path": f"{folder.resolve()}/"}
            zarr3 = (folder / "zarr.json").is_file()
        spec = {
            "driver": "zarr3" if zarr3 else "zarr",
            "kvstore": kvstore,
            "context": {
                "cache_pool": {"total_bytes_limit": 0},
                "data_copy_concurrency": {"limit": 1},
            },
        }
        try:
            arr = ts.open(spec, open=True, read=True).result()
        except (ValueError, RuntimeError, OSError) as e:  # tensorstore's errors are ValueErrors
            detail = " ".join(str(e).split())[:160]
            raise CorruptCheckpointError(
                f"{self.item}: cannot open array '{key}' ({detail})"
            ) from None
        chunk = tuple(arr.chunk_layout.read_chunk.shape or arr.shape)
        itemsize = arr.dtype.numpy_dtype.itemsize
        chunk_bytes = math.prod(min(c, s) for c, s in zip(chunk, arr.shape, strict=True)) * itemsize
        # a zstd chunk inflates at most ~32000-fold: a claim beyond that is refused before a read
        if chunk_bytes > (self.data_bytes << 15) + (1 << 20):
            raise CorruptCheckpointError(
                f"{self.item}: array '{key}' claims chunks of {chunk_bytes} bytes, more than the "
                f"checkpoint's {self.data_bytes} bytes of data could hold"
            )
        if not cached:
            return arr
        spec["context"]["cache_pool"]["total_bytes_limit"] = chunk_bytes + 1
        return ts.open(spec, open=True, read=True).result()

    def _ocdbt_has(self, key: str) -> bool:
        if not hasattr(self, "_keys"):
            kv = self.ts.KvStore.open(
                {"driver": "ocdbt", "base": f"file://{self.item.resolve()}"}
            ).result()
            self._keys = {k.decode("utf-8", "replace") for k in kv.list().result()}
        return key in self._keys

    @property
    def step(self) -> float:
        arr = self._open(self._key("count"), cached=False)
        if math.prod(arr.shape) != 1:
            raise CorruptCheckpointError(f"{self.item}: optax count has shape {list(arr.shape)}")
        value = arr.read().result().reshape(-1)[0].item()
        return float(guard.finite_int(value, source=self.item, what="optax count"))

    def describe(self) -> CheckpointInfo:
        shapes = [
            self._open(self._key("mu", *self._params[n]), cached=False).shape for n in self.names
        ]
        return CheckpointInfo(
            path=self.path,
            format=self.name,
            step=int(self.step),
            n_tensors=len(self.names),
            n_params=sum(math.prod(s) for s in shapes),
            bytes_on_disk=self.data_bytes,
            notes=(
                f"optax state at {'/'.join(self.prefix)} ({'OCDBT' if self.ocdbt else 'zarr folders'})",
                "optax stores no betas/eps: from options",
            ),
        )

    def hyper_params(self) -> HyperParams:
        return options_hyper_params(self.options, source=self.item, writer="optax (count, mu, nu)")

    def iter_tensors(self) -> Iterator[TensorState]:
        hp, step = self.hyper_params(), self.step
        for name in self.names:
            m_key, v_key = (
                self._key("mu", *self._params[name]),
                self._key("nu", *self._params[name]),
            )
            m, v = self._open(m_key, cached=False), self._open(v_key, cached=False)
            if tuple(m.shape) != tuple(v.shape):
                raise CorruptCheckpointError(
                    f"{self.item}: '{m_key}' {list(m.shape)} and '{v_key}' {list(v.shape)} differ"
                )
            dtype = str(m.dtype.numpy_dtype)
            if dtype not in _DTYPES:
                raise CorruptCheckpointError(f"{self.item}: '{m_key}' is {dtype}, not a float")
            yield TensorState(
                name=name,
                shape=tuple(m.shape),
                step=step,
                hp=hp,
                dtype=dtype,
                chunks=lambda n, a=m_key, b=v_key: self._chunks(a, b, n),
                notes=["order: the pytree's (sorted key) order"],
            )

    def _chunks(self, m_key: str, v_key: str, n: int) -> Iterator[tuple]:
        m, v = self._open(m_key), self._open(v_key)  # one cached chunk each, freed after
        shape, numel = tuple(m.shape), math.prod(m.shape)
        for a in range(0, numel, n):
            b = min(a + n, numel)
            yield a, _read(m, shape, a, b), _read(v, shape, a, b), None


def _read(arr: Any, shape: tuple[int, ...], a: int, b: int) -> Any:
    """Flat elements [a, b) of a tensorstore array as a 1-D torch tensor in a pooled buffer
    (buffers.empty: tensorstore's own result is dropped at once, so the heap does not drift)."""
    import numpy as np
    import torch

    from adamscope.readers import buffers

    dtype = arr.dtype.numpy_dtype
    bf16 = dtype.name == "bfloat16"  # ml_dtypes: torch has no numpy bridge for it
    out = buffers.empty(b - a, torch.bfloat16 if bf16 else getattr(torch, dtype.name))
    flat = out.view(torch.int16).numpy() if bf16 else out.numpy()
    pos = 0
    for box in flat_slices(shape, a, b):
        x = (arr[box] if box else arr).read().result().reshape(-1)
        if not shape:
            x = x[a:b]
        flat[pos : pos + x.size] = x.view(np.int16) if bf16 else x
        pos += x.size
    return out
