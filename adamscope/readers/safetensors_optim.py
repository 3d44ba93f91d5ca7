"""Optimizer state saved as safetensors: MLX (`mx.save_safetensors(path,
dict(tree_flatten(optimizer.state)))`), streamed with `safe_open(...).get_slice`.

MLX layout (checked with mlx 0.32 on CPU): `step` (uint64 scalar, already incremented),
`learning_rate` (when set), and `<param path>.m` / `<param path>.v` holding Adam's raw EMAs in the
parameter dtype. Betas, eps, weight decay and bias correction are NOT saved, and MLX's Adam applies
no bias correction by default: they come from ReaderOptions, else MLX's defaults with a warning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

from adamscope.config import ReaderOptions
from adamscope.errors import CorruptCheckpointError, NotAdamError, UnsupportedFormatError
from adamscope.readers import guard, safetensors_io
from adamscope.readers.safetensors_io import read_flat
from adamscope.vocab import CheckpointInfo, HyperParams, TensorState

log = logging.getLogger(__name__)

_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# mlx.optimizers.Adam / AdamW defaults
MLX_DEFAULTS = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "bias_correction": False}


def _keys(path: Path) -> list[str] | None:
    """Tensor names of a safetensors file (its header, parsed once), or None when it is not one."""
    try:
        return list(safetensors_io.header(path))
    except CorruptCheckpointError:
        return None


# per-parameter state names of mlx.optimizers (Adam/AdamW: m, v; SGD/RMSprop: v; Lion: m; ...)
_MLX_STATE = frozenset({"m", "v", "s", "u", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq"})
_MLX_SCALARS = frozenset({"step", "learning_rate"})


def _is_mlx_state(keys: list[str]) -> bool:
    """`step` plus only `<path>.<state name>` entries: an mlx.optimizers state (any optimizer)."""
    rest = [k for k in keys if k not in _MLX_SCALARS]
    return "step" in keys and bool(rest) and all(k.rsplit(".", 1)[-1] in _MLX_STATE for k in rest)


def _is_mlx_adam(keys: list[str]) -> bool:
    names = set(keys)
    moments = [k[: -len(".m")] for k in keys if k.endswith(".m")]
    return bool(moments) and all(f"{n}.v" in names for n in moments)


class SafetensorsOptimReader:
    """MLX optimizer state in one safetensors file."""

    name = "mlx-safetensors"

    @classmethod
    def probe(cls, path: Path) -> bool:
        path = Path(path)
        if not path.is_file() or path.suffix != ".safetensors":
            return False
        keys = _keys(path)
        return keys is not None and _is_mlx_state(keys)

    def __init__(self, path: Path, *, options: ReaderOptions) -> None:
        self.path = Path(path)
        self.options = options
        entries = safetensors_io.header(self.path)  # CorruptCheckpointError naming what is wrong
        keys = list(entries)
        if not _is_mlx_state(keys):
            raise UnsupportedFormatError(
                f"{self.path}: safetensors without MLX optimizer keys ('step', '<name>.m', "
                "'<name>.v'); is it a model file?"
            )
        if not _is_mlx_adam(keys):
            found = sorted({k.rsplit(".", 1)[-1] for k in keys if k not in _MLX_SCALARS})
            raise NotAdamError(
                f"{self.path}: MLX optimizer state holds per-parameter '{', '.join(found)}', "
                "not Adam's m and v (SGD/RMSprop keep v, Lion m, Adafactor factored rows)"
            )
        self.names = [k[: -len(".m")] for k in keys if k.endswith(".m")]
        self.shapes = {n: entries[f"{n}.m"].shape for n in self.names}
        self.dtypes = {n: entries[f"{n}.m"].dtype for n in self.names}
        for n in self.names:
            if entries[f"{n}.v"].shape != self.shapes[n]:
                raise CorruptCheckpointError(f"{self.path}: '{n}.m' and '{n}.v' shapes differ")
            for k in (f"{n}.m", f"{n}.v"):
                if entries[k].dtype not in _DTYPES:
                    raise CorruptCheckpointError(
                        f"{self.path}: '{k}' is {entries[k].dtype}; Adam moments are floating "
                        "point (F16/BF16/F32/F64)"
                    )
        self._handles = safetensors_io.Handles()  # one open file: the header is parsed once
        f = self._handles.get(self.path)
        self.step = float(guard.finite_int(f.get_tensor("step"), source=self.path, what="step"))
        self.lr = _scalar(f, "learning_rate", source=self.path) if "learning_rate" in keys else None

    def describe(self) -> CheckpointInfo:
        return CheckpointInfo(
            path=self.path,
            format=self.name,
            step=int(self.step),
            n_tensors=len(self.names),
            n_params=sum(math.prod(s) for s in self.shapes.values()),
            bytes_on_disk=self.path.stat().st_size,
            notes=("MLX saves no betas/eps/bias correction: taken from options or MLX defaults",),
        )

    def hyper_params(self) -> HyperParams:
        """Betas/eps/bias correction from ReaderOptions, else MLX's defaults (with a warning)."""
        chosen, defaulted = {}, []
        for key, default in MLX_DEFAULTS.items():
            value = getattr(self.options, key)
            if value is None:
                value = default
                defaulted.append(f"{key}={default}")
            chosen[key] = value
        if defaulted:
            log.warning(
                "%s: MLX optimizer files do not store %s; assuming MLX's defaults (%s). "
                "Pass --beta1/--beta2/--eps/--bias-correction if the run used others.",
                self.path,
                "/".join(d.split("=")[0] for d in defaulted),
                ", ".join(defaulted),
            )
        return HyperParams(
            beta1=float(chosen["beta1"]),
            beta2=float(chosen["beta2"]),
            eps=float(chosen["eps"]),
            lr=self.lr,
            bias_correction=bool(chosen["bias_correction"]),
        )

    def iter_tensors(self) -> Iterator[TensorState]:
        hp = self.hyper_params()
        for name in self.names:
            yield TensorState(
                name=name,
                shape=self.shapes[name],
                step=self.step,
                hp=hp,
                dtype=_DTYPES.get(self.dtypes[name], self.dtypes[name].lower()),
                chunks=lambda n, name=name: self._chunks(name, n),
                notes=["order: the file's (alphabetical) key order, not the model's"],
            )

    def _chunks(self, name: str, n: int) -> Iterator[tuple]:
        shape, numel = self.shapes[name], math.prod(self.shapes[name])
        f = self._handles.get(self.path)
        for a in range(0, numel, n):
            b = min(a + n, numel)
            m = read_flat(f, f"{name}.m", shape, a, b)
            v = read_flat(f, f"{name}.v", shape, a, b)
            yield a, m, v, None


def _scalar(f: object, key: str, *, source: Path) -> float:
    t = f.get_tensor(key)  # type: ignore[attr-defined]
    if t.numel() != 1 or not math.isfinite(float(t.reshape(-1)[0])):
        raise CorruptCheckpointError(f"{source}: '{key}' is not one finite number")
    return float(t.reshape(-1)[0])
