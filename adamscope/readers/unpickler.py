"""A restricted unpickler for torch checkpoints: builds lazy tensors, runs nothing from the file.

torch pickles a checkpoint's object tree (`data.pkl`) with references to globals such as
`torch._utils._rebuild_tensor_v2`. A normal unpickler imports and calls whatever the file names,
which is how a malicious checkpoint runs code. This one resolves globals through an explicit table
of our own stand-ins: tensor rebuild functions become `make_tensor` callbacks that only record where
the data lives, a few harmless builtins map to themselves, and known framework classes (DeepSpeed's
loss scalers, Lightning's AttributeDict, argparse.Namespace, ...) become inert `Stub` objects that
only record the state they were given. Any other global raises `UnsafePickleError`.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import codecs
import collections
import io
import pathlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adamscope.errors import CorruptCheckpointError, UnsafePickleError, UnsupportedFormatError
from adamscope.readers.guard import brief
from adamscope.readers.quantized import TORCHAO_STATES

# torch's legacy typed-storage classes, by the name they are pickled under, and their dtype names.
STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
}

# dtypes that may appear as `torch.<name>` globals (tensors of the newer dtypes are pickled as an
# UntypedStorage plus the dtype, see torch._utils._rebuild_tensor_v3).
DTYPE_NAMES = frozenset(
    set(STORAGE_DTYPES.values())
    | {"float8_e5m2", "float8_e4m3fn", "float8_e5m2fnuz", "float8_e4m3fnuz", "float8_e8m0fnu"}
    | {"uint16", "uint32", "uint64", "complex32"}
)

# Framework classes seen in real checkpoints; each becomes an inert Stub recording its state.
# Readers for other families may add to this set (e.g. DeepSpeed-specific classes).
STUBBED_GLOBALS: set[str] = {
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.zero.stage_1_and_2.LossScaler",
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "argparse.Namespace",
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode",
    "typing.Any",
    # Megatron-LM's legacy checkpoints pickle numpy's RNG state (an ndarray) beside the model:
    # the array becomes a Stub recording its raw state, nothing of numpy is imported or run
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.ndarray",
}

# tensor subclasses rebuilt from their recorded codes and scales (torchao's quantized optimizer
# states): become readers/quantized.BlockQuantized, nothing of torchao is imported
_WRAPPER_SUBCLASSES = frozenset(TORCHAO_STATES)

_SAFE_BUILTINS = frozenset(
    {"set", "frozenset", "complex", "slice", "tuple", "list", "dict", "int", "float", "str", "bool"}
)
_TORCH_REBUILD_UNSUPPORTED = frozenset(
    {
        "_rebuild_qtensor",
        "_rebuild_sparse_tensor",
        "_rebuild_nested_tensor",
        "_rebuild_meta_tensor_no_storage",
        "_rebuild_device_tensor_from_numpy",
        "_rebuild_device_tensor_from_cpu_tensor",
    }
)


@dataclass(frozen=True)
class StorageRef:
    """A storage named by a persistent id: `key` names the zip entry `data/<key>`.

    `dtype` is a torch dtype name ("float32", ...) or None for an UntypedStorage (bytes; the tensor
    carries the dtype); `size` is in elements of `dtype` (bytes when untyped).
    """

    key: str
    dtype: str | None
    location: str
    size: int

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("a pickle may not set state on a storage reference")


class Stub(dict):
    """An inert stand-in for a framework object: records constructor args, items and state.

    It subclasses dict so that dict subclasses (AttributeDict) keep their items; nothing of the
    original class is imported or run.
    """

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Stub:
        self = super().__new__(cls)
        self.args = args
        self.state = None
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def attrs(self) -> dict[str, Any]:
        """The recorded instance attributes (from `__dict__` state), or {}."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            merged = dict(state[0] or {})
            merged.update(state[1] or {})
            return merged
        return dict(state) if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"Stub({brief(self.qualname)}, args={brief(self.args)}, state={brief(self.state)})"

    def __reduce__(self) -> Any:  # Stubs are data holders; never re-pickle them as the original
        raise TypeError("adamscope Stub objects cannot be pickled")


_stub_classes: dict[str, type[Stub]] = {}


def stub_class(qualname: str) -> type[Stub]:
    """The (cached) Stub subclass standing in for global `qualname`."""
    cls = _stub_classes.get(qualname)
    if cls is None:
        cls = type(qualname.rsplit(".", 1)[-1], (Stub,), {"qualname": qualname})
        _stub_classes[qualname] = cls
    return cls


class _StorageType:
    """Stand-in for `torch.<X>Storage` / `torch.UntypedStorage` globals: carries the dtype name."""

    def __init__(self, dtype: str | None) -> None:
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("a pickle may not set state on a storage type")


class _TensorType:
    """Stand-in for torch.Tensor / torch.nn.Parameter as `new_type` of _rebuild_from_type_v2."""

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("a pickle may not set state on a tensor type")


class _WrapperType:
    """Stand-in for an allowlisted tensor subclass rebuilt through `_rebuild_wrapper_subclass`
    (torchao's quantized optimizer states, quantized.TORCHAO_STATES): only its name is kept."""

    def __init__(self, qualname: str) -> None:
        self.qualname = qualname

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("a pickle may not set state on a tensor subclass type")


@dataclass(frozen=True)
class _WrapperShell:
    """What `_rebuild_wrapper_subclass` returns: the subclass's name and shape, no data; its
    recorded `__dict__` (codes, scales) arrives next, in `_rebuild_from_type_v2`."""

    qualname: str
    shape: tuple[int, ...]

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("a pickle may not set state on a tensor subclass shell")


def _subclass_refusal(source: str, qualname: str) -> str:
    """The one line for a tensor subclass outside _WRAPPER_SUBCLASSES (torchao's named as such)."""
    known = ", ".join(sorted(q.rsplit(".", 1)[-1] for q in TORCHAO_STATES))
    library = "a torchao" if qualname.startswith("torchao.") else "a"
    return (
        f"{source}: holds {library} tensor subclass adamscope cannot read ({qualname}); of "
        f"torchao's, adamscope reads the optimizer states {known}"
    )


def _get_layout(name: Any) -> str:
    # torch.serialization._get_layout('torch.strided'): the only layout a wrapper subclass of
    # optimizer state has; the string is kept, nothing is looked up
    if name != "torch.strided":
        raise pickle.UnpicklingError(f"tensor layout {brief(name, 40)}")
    return name


class _NumpyDType:
    """Stand-in for numpy.dtype: remembers the type string and byte order, builds the real dtype."""

    def __init__(self, kind: str, align: bool = False, copy: bool = False) -> None:
        self.kind = str(kind)
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in "<>=|":
            self.byteorder = state[1]

    def to_numpy(self) -> Any:
        import numpy as np

        dt = np.dtype(self.kind)
        if dt.kind not in "biufc?":  # plain numbers only: no object or structured dtypes
            raise pickle.UnpicklingError(f"numpy scalar of dtype {brief(self.kind, 20)}")
        return dt.newbyteorder(self.byteorder) if self.byteorder in "<>" else dt


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    import numpy as np

    if not isinstance(dtype, _NumpyDType) or not isinstance(data, bytes | bytearray):
        raise pickle.UnpicklingError("numpy scalar with unexpected arguments")
    return np.frombuffer(bytes(data), dtype=dtype.to_numpy(), count=1)[0]


def _codecs_encode(obj: Any, encoding: str = "utf-8") -> bytes:
    # protocol-2 pickles store bytes as _codecs.encode(text, 'latin1')
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise pickle.UnpicklingError("_codecs.encode with unexpected arguments")
    return codecs.encode(obj, encoding)


def _bytearray(data: Any = b"", encoding: str = "latin-1") -> bytearray:
    # bytearray(<huge int>) would allocate: accept only the (text, encoding) / bytes forms
    if isinstance(data, str):
        return bytearray(_codecs_encode(data, encoding))
    if isinstance(data, bytes | bytearray):
        return bytearray(data)
    raise pickle.UnpicklingError("bytearray with unexpected arguments")


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    # copyreg._reconstructor (protocol 0/1 objects): only ever instantiate our own stubs
    if not (isinstance(cls, type) and issubclass(cls, Stub)):
        raise pickle.UnpicklingError("copyreg._reconstructor of a non-stubbed class")
    return cls.__new__(cls)


def _defaultdict(factory: Any = None, *args: Any) -> dict:
    return {}  # the factory never runs: a plain dict keeps the recorded items


def _path(*parts: Any) -> pathlib.PurePath:
    return pathlib.PurePosixPath(*[str(p) for p in parts])


def _windows_path(*parts: Any) -> pathlib.PurePath:
    return pathlib.PureWindowsPath(*[str(p) for p in parts])


def _device(*args: Any) -> str:
    if not all(isinstance(a, str | int) for a in args):
        raise pickle.UnpicklingError("torch.device with unexpected arguments")
    return ":".join(str(a) for a in args)


# make_tensor(storage, storage_offset, size, stride, dtype_name) -> the tensor's stand-in
MakeTensor = Callable[[StorageRef, int, tuple[int, ...], tuple[int, ...], str], Any]


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles torch's `data.pkl` (or a legacy torch.save pickle) through an allowlist.

    Args:
        file: binary file positioned at the pickle.
        source: the checkpoint path, for error messages.
        make_tensor: builds the stand-in for each tensor from its storage reference and layout.
        stub_unknown: stub every unknown global instead of raising (used only to *peek* at a file's
            structure for format detection; nothing is executed either way).
    """

    def __init__(
        self,
        file: io.BufferedIOBase | io.BytesIO,
        *,
        source: str,
        make_tensor: MakeTensor,
        stub_unknown: bool = False,
    ) -> None:
        super().__init__(file)
        self.source = source
        self.make_tensor = make_tensor
        self.stub_unknown = stub_unknown
        self.unknown_globals: set[str] = set()

    # --- tensor rebuild stand-ins -------------------------------------------------------------
    def _tensor(self, storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None) -> Any:
        if not isinstance(storage, StorageRef):
            raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
        if dtype is None or dtype not in DTYPE_NAMES:
            raise pickle.UnpicklingError("tensor without a known dtype")
        shape, strides = tuple(int(s) for s in size), tuple(int(s) for s in stride)
        if len(shape) != len(strides) or any(s < 0 for s in shape) or int(offset) < 0:
            raise pickle.UnpicklingError(f"tensor with size {shape} and stride {strides}")
        return self.make_tensor(storage, int(offset), shape, strides, dtype)

    def _rebuild_tensor_v2(self, storage, offset, size, stride, *_rest) -> Any:  # noqa: ANN001
        return self._tensor(storage, offset, size, stride, getattr(storage, "dtype", None))

    def _rebuild_tensor_v3(self, storage, offset, size, stride, _rg, _hooks, dtype, *_rest) -> Any:  # noqa: ANN001
        return self._tensor(storage, offset, size, stride, _dtype_name(dtype))

    @staticmethod
    def _rebuild_parameter(data: Any, *_rest: Any) -> Any:
        return data  # a Parameter is its data for our purposes

    def _rebuild_from_type_v2(self, func: Any, new_type: Any, args: Any, state: Any) -> Any:
        if isinstance(new_type, _WrapperType) and func == self._rebuild_wrapper_subclass:
            from adamscope.readers.quantized import from_torchao

            shell = func(*args)
            if not isinstance(shell, _WrapperShell) or shell.qualname != new_type.qualname:
                raise pickle.UnpicklingError("_rebuild_from_type_v2 of another subclass")
            return from_torchao(shell.qualname, shell.shape, state, source=self.source)
        if isinstance(new_type, type) and issubclass(new_type, Stub):  # peek: an unknown class
            raise UnsupportedFormatError(_subclass_refusal(self.source, new_type.qualname))
        if not isinstance(new_type, _TensorType) or not callable(func):
            raise pickle.UnpicklingError("_rebuild_from_type_v2 of a tensor subclass")
        return func(*args)

    def _rebuild_wrapper_subclass(self, cls: Any, dtype: Any, size: Any, *_rest: Any) -> Any:
        if not isinstance(cls, _WrapperType):
            name = f"{getattr(cls, 'qualname', type(cls).__name__)!s:.80}"
            raise UnsupportedFormatError(_subclass_refusal(self.source, name))
        _dtype_name(dtype)
        if not isinstance(size, tuple | list) or not all(isinstance(d, int) for d in size):
            raise pickle.UnpicklingError("wrapper subclass with a size that is not a tuple")
        if any(d < 0 for d in size):
            raise pickle.UnpicklingError(f"wrapper subclass with size {tuple(size)}")
        return _WrapperShell(cls.qualname, tuple(int(d) for d in size))

    # --- pickle hooks -------------------------------------------------------------------------
    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {brief(pid)}")
        storage_type, key, location, size = pid[1], pid[2], pid[3], pid[4]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError("persistent id without a storage type")
        if len(pid) > 5 and pid[5] is not None:  # legacy storage views
            raise UnsupportedFormatError(
                f"{self.source}: legacy storage views are not supported; re-save with torch >= 1.6"
            )
        return StorageRef(str(key), storage_type.dtype, str(location), int(size))

    def find_class(self, module: str, name: str) -> Any:
        # protocol-2 pickles name Python 2 modules (__builtin__, copy_reg); map them as pickle does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualname = f"{module}.{name}"
        found = self._lookup(module, name, qualname)
        if found is not None:
            return found
        if qualname in STUBBED_GLOBALS:
            return stub_class(qualname)
        if self.stub_unknown:
            self.unknown_globals.add(qualname)
            return stub_class(qualname)
        raise UnsafePickleError(
            f"{self.source}: refusing to load global '{qualname}' (not on adamscope's allowlist; "
            "nothing was executed). If you trust this file, pass --trust-pickle."
        )

    def _lookup(self, module: str, name: str, qualname: str) -> Any:
        if module == "torch._utils":
            if name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
                return self._rebuild_tensor_v2
            if name == "_rebuild_tensor_v3":
                return self._rebuild_tensor_v3
            if name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
                return self._rebuild_parameter
            if name == "_rebuild_wrapper_subclass":
                return self._rebuild_wrapper_subclass
            if name in _TORCH_REBUILD_UNSUPPORTED:
                raise UnsupportedFormatError(
                    f"{self.source}: holds a tensor kind adamscope cannot read lazily ({qualname})"
                )
        if qualname == "torch._tensor._rebuild_from_type_v2":
            return self._rebuild_from_type_v2
        if qualname in ("torch.Tensor", "torch.nn.parameter.Parameter"):
            return _TensorType()
        if qualname in _WRAPPER_SUBCLASSES:
            return _WrapperType(qualname)
        if qualname == "torch.serialization._get_layout":
            return _get_layout
        if module in ("torch", "torch.storage"):
            if name in STORAGE_DTYPES:
                return _StorageType(STORAGE_DTYPES[name])
            if name in ("UntypedStorage", "TypedStorage"):
                return _StorageType(None)
            if name in DTYPE_NAMES:
                import torch

                return getattr(torch, name)
            if name == "Size":
                import torch

                return torch.Size
            if name == "device":
                return _device
        if module == "builtins" and name in _SAFE_BUILTINS:
            return getattr(builtins, name)
        simple = {
            "builtins.bytearray": _bytearray,
            "collections.OrderedDict": collections.OrderedDict,
            "collections.Counter": collections.Counter,
            "collections.defaultdict": _defaultdict,
            "_codecs.encode": _codecs_encode,
            "copyreg._reconstructor": _reconstructor,
            "numpy.dtype": _NumpyDType,
            "numpy.core.multiarray.scalar": _numpy_scalar,
            "numpy._core.multiarray.scalar": _numpy_scalar,
            "pathlib.PosixPath": _path,
            "pathlib.PurePosixPath": _path,
            "pathlib.Path": _path,
            "pathlib.WindowsPath": _windows_path,
            "pathlib.PureWindowsPath": _windows_path,
        }
        return simple.get(qualname)


def _dtype_name(dtype: Any) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_NAMES:
        raise pickle.UnpicklingError(f"unexpected dtype {brief(dtype, 40)}")
    return name


# -- the scan before any unpickling ------------------------------------------------------------
# Limits on what a pickle may expand into (docs/security.md): the objects it builds when every
# shared reference (memo GET) is followed, and how deeply they nest. A real checkpoint's data.pkl
# builds a few objects per opcode and nests ~10 deep; a "billion laughs" DAG (a list of two
# references to a list of two references to ...) builds 2^depth from a few hundred bytes, and
# hashing, repr or walking it never ends; a tower of nested slices crashes the interpreter.
EXPANSION_PER_BYTE = 16
EXPANSION_SLACK = 1_000_000
MAX_DEPTH = 500
# from this size on check_pickle runs the numba kernel: below it, importing numba and loading the
# kernel (~0.5 s once per process) would cost more than the reference's ~0.8 s per MB
KERNEL_MIN_BYTES = 1 << 20
_IN_PLACE = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})
_MEMO_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})
_MEMO_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MARK: list[int] = [-1, -1]


def check_pickle(data: bytes, *, source: object) -> None:
    """Refuses a pickle before it is unpickled when it would build more objects than its size
    allows, nest deeper than MAX_DEPTH, index its memo past its own size, or claim more bytes than
    it holds (see check_pickle_reference). Pickles from KERNEL_MIN_BYTES on are scanned by the
    numba kernel (readers/_pickle_scan.py: the same verdicts and messages, ~70x faster); smaller
    ones, those the kernel leaves to it (protocol-0 text opcodes), and all without numba, by the
    pure-Python reference, which is allowed at most guard.PICKLE_BYTES (~200 s of scan).

    Raises:
        CorruptCheckpointError: naming `source` and the limit.
    """
    from adamscope.readers import _pickle_scan, guard

    if len(data) >= KERNEL_MIN_BYTES and _pickle_scan.available():
        limit = EXPANSION_PER_BYTE * len(data) + EXPANSION_SLACK
        if _pickle_scan.check(data, source=source, limit=limit, max_depth=MAX_DEPTH):
            return
    if len(data) > guard.PICKLE_BYTES:
        raise CorruptCheckpointError(
            f"{source}: a pickle of {len(data)} bytes that only the pure-Python scan can check "
            f"(numba missing, or protocol-0 text opcodes), which is allowed {guard.PICKLE_BYTES} "
            "bytes at most; refused before unpickling"
        )
    check_pickle_reference(data, source=source)


def check_pickle_reference(data: bytes, *, source: object) -> None:
    """Refuses a pickle before it is unpickled when it would build more objects than its size
    allows, nest deeper than MAX_DEPTH, or index its memo past its own size (the C unpickler sizes
    its memo table to the largest index: one changed byte would allocate gigabytes).

    It runs the pickle's stack machine on (objects, depth) pairs instead of objects: pure Python
    over the opcodes, ~0.8 s per MB of pickle here (3x the bare opcode walk; measured on a 14 MB
    pickle of 150k dict entries; a checkpoint of 2,000 tensors has ~200 KB).

    Raises:
        CorruptCheckpointError: naming `source` and the limit.
    """
    import pickletools

    from adamscope.readers._pickle_scan import refusal, truncation

    limit = EXPANSION_PER_BYTE * len(data) + EXPANSION_SLACK
    # [objects, depth] cells, shared between the stack and the memo: an in-place op (APPEND...)
    # grows the container after it was memoized, and a later GET must see the grown one
    stack: list[list[int]] = []
    memo: dict[int, list[int]] = {}

    def refuse(why: str, pos: int) -> None:
        raise refusal(source, why, pos)

    def pop_mark() -> list[list[int]]:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is _MARK:
                items = stack[i + 1 :]
                del stack[i:]
                return items
        raise ValueError("MARK missing")

    def step(op: Any, arg: Any, pos: int) -> None:
        name = op.name
        if name in _MEMO_PUT or name == "MEMOIZE":
            memo[len(memo) if name == "MEMOIZE" else int(arg)] = stack[-1]
            return
        if name in _MEMO_GET:
            if int(arg) not in memo:
                refuse(f"memo index {arg} read before it is written", pos)
            stack.append(memo[int(arg)])
            return
        if name == "MARK":
            stack.append(_MARK)
            return
        if name in ("POP", "STOP"):
            stack.pop()
            return
        if name == "POP_MARK":
            pop_mark()
            return
        if name == "DUP":
            stack.append(stack[-1])
            return
        if name in ("PROTO", "FRAME", "NEXT_BUFFER", "READONLY_BUFFER"):
            return
        popped: list[list[int]] = []
        for item in reversed(op.stack_before):
            if item is pickletools.stackslice:
                popped += pop_mark()
            elif item is not pickletools.markobject:
                popped.append(stack.pop())
        if not op.stack_after:
            return
        if name in _IN_PLACE:  # the container (popped last) goes back, grown
            cell = popped.pop()
            if cell is _MARK:  # not a container: growing it would change the shared marker
                raise ValueError("a MARK used as a container")
            stack.append(cell)
            for s, d in popped:
                cell[0], cell[1] = cell[0] + s, max(cell[1], d + 1)
        else:
            if popped:
                cell = [1 + sum(s for s, _ in popped), 1 + max(d for _, d in popped)]
            else:  # a leaf: a long string counts by its length, so repeats of it add up
                cell = [1 + (len(arg) >> 4 if isinstance(arg, str | bytes) else 0), 1]
            stack.append(cell)
        if cell[0] > limit:
            refuse(f"expands to more than {limit} objects through shared references", pos)
        if cell[1] > MAX_DEPTH:
            refuse(f"nests deeper than {MAX_DEPTH} levels", pos)

    simulating = True
    try:
        for op, arg, pos in pickletools.genops(data):
            if op.name in _MEMO_PUT and not 0 <= int(arg) <= len(data):
                refuse(f"memo index {arg} exceeds the pickle's size", pos)
            if simulating:
                try:
                    step(op, arg, pos)
                except (IndexError, KeyError, ValueError):
                    simulating = False  # an inconsistent stream: the unpickler will say so
    except ValueError as e:
        # a length that runs past the data (BINBYTES8, BYTEARRAY8, BINUNICODE8 of 2**55 bytes):
        # the C unpickler would try to allocate it first (a MemoryError, and CPython prints a
        # stray "deallocated bytearray" SystemError on the way out)
        if "but only" in str(e):
            raise truncation(source, e) from None
        return  # another malformed opcode: the unpickler says what is wrong
