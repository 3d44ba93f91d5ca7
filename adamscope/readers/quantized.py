"""Quantized Adam state, read from its stored codes and scales: bitsandbytes 8-bit (blockwise)
Adam/AdamW/paged AdamW and torchao's AdamW8bit / AdamW4bit / AdamWFp8.

Both libraries store each moment as codes plus one scale per block of the flattened tensor
(FORMATS.md): value[i] = qmap[code[i]] * scale[i // block] for the 8-bit and 4-bit dynamic maps
(the 256- or 16-entry `qmap` is stored with the state), value[i] = float(code[i]) * scale[i // block]
for torchao's float8_e4m3fn codes. `BlockQuantized` is a lazy tensor (the LazyTensor interface the
readers use: shape, numel, dtype_name, read) that dequantizes the requested elements only, chunk
by chunk, with our own code: neither library is imported, nothing from the file runs.

- bitsandbytes: a state entry is `{'step': int, '__bnb_optimizer_quant_state__': {'state1',
  'state2', 'qmap1', 'qmap2', 'absmax1', 'absmax2'}}` (bitsandbytes >= 0.49.2; before, the same keys
  sit in the entry itself). state1 is m, state2 is v; tensors under `min_8bit_size` (4096) keep
  float32 state1/state2 and no qmap. The block size is whatever makes ceil(numel / block) equal
  len(absmax) (2048 up to 0.43, 256 after).
- torchao: exp_avg/exp_avg_sq are tensor subclasses pickled through `_rebuild_wrapper_subclass`;
  the unpickler (unpickler.py) hands their recorded `__dict__` (codes, scale, qmap, ...) to
  `from_torchao`. 4-bit codes pack two elements per byte, the first in the high nibble.
"""

from __future__ import annotations

import math
from typing import Any

from adamscope.errors import CorruptCheckpointError, NotAdamError, UnsupportedFormatError

BNB_KEY = "__bnb_optimizer_quant_state__"

# what torchao's subclasses are pickled as -> (scheme, code bits or None for fp8, codes dtype)
TORCHAO_STATES = {
    "torchao.optim.subclass_8bit.OptimState8bit": ("torchao-8bit", 8, "uint8"),
    "torchao.optim.subclass_4bit.OptimState4bit": ("torchao-4bit", 4, "uint8"),
    "torchao.optim.subclass_fp8.OptimStateFp8": ("torchao-fp8", None, "float8_e4m3fn"),
}


def _tensor_like(x: Any) -> bool:
    return hasattr(x, "read") and hasattr(x, "shape") and hasattr(x, "dtype_name")


class BlockQuantized:
    """A blockwise-quantized tensor read lazily: `read(start, stop)` dequantizes elements
    [start, stop) in flat order to float32, reading only their codes and scales.

    Args:
        codes: lazy tensor of codes (uint8; 4-bit: two per byte; fp8: float8_e4m3fn).
        scale: lazy 1-D tensor, one float scale (absmax) per block of `block` elements.
        qmap: lazy lookup table (2**bits entries), None for fp8 codes.
        shape: the logical shape of the state.
        bits: 8, 4, or None (float8 codes).
        scheme: what `dtype_name` reports, e.g. "bnb-8bit-b256".
        what: "<file>: '<name>' <key>" for error messages.
    """

    def __init__(
        self,
        *,
        codes: Any,
        scale: Any,
        qmap: Any,
        shape: tuple[int, ...],
        block: int,
        bits: int | None,
        scheme: str,
        what: str,
    ) -> None:
        self.codes, self.scale, self.shape, self.block, self.bits = codes, scale, shape, block, bits
        self.dtype_name = scheme
        self.stride = _contiguous(shape)
        self.storage_offset = 0
        self.storage_key = f"quantized:{getattr(codes, 'storage_key', id(codes))}"
        self.what = what
        self._qmap_lazy = qmap
        self._qmap: Any = None
        self._check()

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __setstate__(self, state: Any) -> None:
        import pickle

        raise pickle.UnpicklingError("a pickle may not set state on a quantized tensor")

    def __repr__(self) -> str:
        return f"BlockQuantized({self.dtype_name}, shape={self.shape})"

    def _check(self) -> None:
        n, per_byte = self.numel, 2 if self.bits == 4 else 1
        if self.block < 1 or self.scale.numel != -(-n // self.block):
            raise CorruptCheckpointError(
                f"{self.what}: {self.scale.numel} block scales for {n} elements in blocks of "
                f"{self.block}"
            )
        if self.codes.numel != -(-n // per_byte):
            raise CorruptCheckpointError(
                f"{self.what}: {self.codes.numel} codes for a state of {n} elements"
            )
        if self.bits is not None:
            size = 1 << self.bits
            if self._qmap_lazy is None or self._qmap_lazy.numel != size:
                got = None if self._qmap_lazy is None else self._qmap_lazy.numel
                raise CorruptCheckpointError(
                    f"{self.what}: quantization map has {got} entries, expected {size}"
                )

    def qmap(self) -> Any:
        """The lookup table as a float32 tensor (read once)."""
        import torch

        if self._qmap is None:
            q = self._qmap_lazy.read(0, self._qmap_lazy.numel).to(torch.float32).clone()
            self._qmap = q
        return self._qmap

    def read(self, start: int, stop: int) -> Any:
        import torch

        start, stop = max(0, start), min(stop, self.numel)
        if stop <= start:
            return torch.empty(0, dtype=torch.float32)
        if self.bits == 4:
            packed = self.codes.read(start // 2, (stop + 1) // 2)
            pairs = torch.stack((packed >> 4, packed & 0x0F), dim=-1).reshape(-1)
            codes = pairs[start % 2 : start % 2 + stop - start]
        else:
            codes = self.codes.read(start, stop)
        if self.bits is None:
            values = codes.to(torch.float32)
        else:
            values = self.qmap().index_select(0, codes.to(torch.int64))
        first, last = start // self.block, (stop - 1) // self.block + 1
        scales = self.scale.read(first, last).to(torch.float32)
        offset = start - first * self.block
        expanded = scales.repeat_interleave(self.block)[offset : offset + stop - start]
        return values.mul_(expanded)

    def item(self) -> float:
        if self.numel != 1:
            raise ValueError(f"item() of a tensor with {self.numel} elements")
        return float(self.read(0, 1)[0])


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(strides))


# -- torchao -------------------------------------------------------------------------------------
def from_torchao(qualname: str, shape: tuple[int, ...], state: Any, *, source: str) -> Any:
    """The BlockQuantized for one torchao OptimState* object from its pickled `__dict__`.

    Raises:
        CorruptCheckpointError: the recorded codes/scale/qmap do not fit together.
    """
    scheme, bits, code_dtype = TORCHAO_STATES[qualname]
    what = f"{source}: {qualname.rsplit('.', 1)[-1]}"
    if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
        state = {**(state[0] or {}), **(state[1] or {})}
    if not isinstance(state, dict):
        raise CorruptCheckpointError(f"{what}: no recorded codes/scale")
    codes, scale, qmap = state.get("codes"), state.get("scale"), state.get("qmap")
    if not (_tensor_like(codes) and _tensor_like(scale)) or (bits and not _tensor_like(qmap)):
        raise CorruptCheckpointError(f"{what}: codes, scale or qmap is not a tensor")
    if codes.dtype_name != code_dtype:
        raise CorruptCheckpointError(f"{what}: codes are {codes.dtype_name}, not {code_dtype}")
    if bits == 4 and "_shape" in state:
        shape = tuple(int(d) for d in state["_shape"])
    n = math.prod(shape)
    if scale.numel < 1 or n % scale.numel:
        raise CorruptCheckpointError(f"{what}: {scale.numel} block scales for {n} elements")
    block = n // scale.numel
    stored = state.get("block_size")
    if isinstance(stored, int) and stored != block:
        raise CorruptCheckpointError(
            f"{what}: block_size {stored} but {scale.numel} scales for {n} elements"
        )
    return BlockQuantized(
        codes=codes,
        scale=scale,
        qmap=qmap if bits else None,
        shape=shape,
        block=block,
        bits=bits,
        scheme=f"{scheme}-b{block}",
        what=what,
    )


# -- bitsandbytes --------------------------------------------------------------------------------
def is_bnb_entry(entry: Any) -> bool:
    """A bitsandbytes optimizer state entry (nested or flat layout)."""
    return isinstance(entry, dict) and (
        isinstance(entry.get(BNB_KEY), dict) or ("state1" in entry and "exp_avg" not in entry)
    )


def bnb_keys(entry: dict) -> dict[str, Any]:
    """The entry's state with the nested quantization state flattened into it."""
    nested = entry.get(BNB_KEY)
    flat = {k: v for k, v in entry.items() if k != BNB_KEY}
    if isinstance(nested, dict):
        flat.update(nested)
    return flat


def adam_entry(entry: Any, *, source: str, pid: Any = None) -> Any:
    """The Adam view of one optimizer state entry: a bitsandbytes entry with two moments becomes
    `{'step', 'exp_avg', 'exp_avg_sq'}` (lazy, dequantizing when quantized); any other entry is
    returned as it is (a one-moment bitsandbytes state, flattened, so the "not Adam" check sees
    its keys).

    Raises:
        NotAdamError: bitsandbytes state of AdEMAMix (two first moments) or with update-norm
            clipping (LAMB/LARS trust ratios).
        UnsupportedFormatError: non-blockwise 8-bit state (max1/new_max1).
        CorruptCheckpointError: codes, scales and map do not fit together.
    """
    if not is_bnb_entry(entry):
        return entry
    flat = bnb_keys(entry)
    if "state2" not in flat:
        return flat
    label = f"{source}: bitsandbytes state of parameter {pid}"
    if "unorm_vec" in flat:
        raise NotAdamError(
            f"{source}: not Adam/AdamW: bitsandbytes state with update-norm clipping (unorm_vec: "
            "LAMB, or max_unorm set): the applied update is rescaled, not u"
        )
    m = _bnb_moment(flat, 1, what=f"{label} state1")
    v = _bnb_moment(flat, 2, what=f"{label} state2")
    if m.numel != v.numel:
        raise NotAdamError(
            f"{source}: not Adam/AdamW: bitsandbytes state1 has {m.numel} elements and state2 "
            f"{v.numel} (AdEMAMix keeps two first moments)"
        )
    return {"step": flat.get("step"), "exp_avg": m, "exp_avg_sq": v}


def _bnb_moment(flat: dict, i: int, *, what: str) -> Any:
    codes = flat.get(f"state{i}")
    if not _tensor_like(codes):
        raise CorruptCheckpointError(f"{what} is not a tensor")
    qmap = flat.get(f"qmap{i}")
    if qmap is None:  # 32-bit state (small tensors, optim_bits=32): m or v as stored
        return codes
    if f"max{i}" in flat and f"absmax{i}" not in flat:
        raise UnsupportedFormatError(
            f"{what}: non-blockwise 8-bit state (max{i}/new_max{i}); adamscope reads the "
            "blockwise layout bitsandbytes uses for Adam since 0.38"
        )
    absmax = flat.get(f"absmax{i}")
    if not (_tensor_like(qmap) and _tensor_like(absmax)):
        raise CorruptCheckpointError(f"{what}: qmap{i}/absmax{i} missing")
    if codes.dtype_name != "uint8":
        raise CorruptCheckpointError(f"{what}: 8-bit codes are {codes.dtype_name}, not uint8")
    shape = tuple(codes.shape)
    block = _bnb_block(math.prod(shape), absmax.numel, what=what)
    return BlockQuantized(
        codes=codes,
        scale=absmax,
        qmap=qmap,
        shape=shape,
        block=block,
        bits=8,
        scheme=f"bnb-8bit-b{block}",
        what=what,
    )


def _bnb_block(n: int, n_blocks: int, *, what: str) -> int:
    """The power-of-two block size for which ceil(n / block) == n_blocks (unique when
    n >= block, as bitsandbytes quantizes only tensors of at least 4096 elements)."""
    fits = [1 << k for k in range(6, 17) if -(-n // (1 << k)) == n_blocks]
    if not fits:
        raise CorruptCheckpointError(
            f"{what}: {n_blocks} absmax blocks fit no block size for {n} elements"
        )
    return fits[-1] if n_blocks == 1 else fits[0]
