"""The torch.save family: a bare `torch.save(optimizer.state_dict())`, a nanoGPT-style `ckpt.pt`
({'model', 'optimizer', ...}) and a Lightning `.ckpt` (`optimizer_states`).

The file is read through the readers (restricted unpickler, lazy tensors: no tensor data is
loaded) and names come from the same code that names analyze's rows, so a name in the tables is a
name here. Each state tensor is its own storage entry in the zip; repair zeroes its bytes in a
copy of the file (zippatch.py). Memory stays at a copy buffer plus the unpickled tree.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adamscope.errors import CorruptCheckpointError, UnsupportedFormatError
from adamscope.readers.naming import is_tensor_like
from adamscope.repair.plan import EpsSlot, Layout, TensorSlots
from adamscope.repair.zippatch import Edit, Window

STATE_TENSORS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def window_of(path: Path) -> Window:
    """The whole file as one zip."""
    return Window(Path(path), 0, Path(path).stat().st_size)


def lazy_zero(t: Any, *, source: str, what: str, start: int = 0, count: int | None = None) -> Edit:
    """The edit that zeroes elements [start, start + count) of a lazy tensor (all by default).

    Raises:
        UnsupportedFormatError: the tensor was not read lazily from a torch zip file, or its
            elements are not one block of its storage.
    """
    from adamscope.readers.torchzip import LazyTensor

    if not isinstance(t, LazyTensor):
        raise UnsupportedFormatError(
            f"{source}: {what} was not read from a torch zip file (repair never uses "
            "--trust-pickle: it edits the file's bytes)"
        )
    count = t.numel - start if count is None else count
    data_start, nbytes = t.archive.storage_span(t.storage.key)
    first = t.storage_offset
    if not t.is_contiguous:  # a permuted dense tensor still covers one block of its storage
        spans = [(s - 1) * st for s, st in zip(t.shape, t.stride, strict=True)]
        if (
            any(x < 0 for x in spans)
            or sum(spans) + 1 != t.numel
            or (start, count)
            != (
                0,
                t.numel,
            )
        ):
            raise UnsupportedFormatError(
                f"{source}: {what} is a strided view of its storage; cannot reset it in place"
            )
    offset = data_start + (first + start) * t.itemsize
    size = count * t.itemsize
    if start < 0 or count < 0 or offset + size > data_start + nbytes:
        raise CorruptCheckpointError(f"{source}: {what} runs past its storage entry")
    return Edit(Window(t.archive.path, 0, t.archive.size), offset, size)


def optim_slots(sd: dict, names: list[str], *, source: str) -> dict[str, TensorSlots]:
    """Where each stepped parameter's state lies in an optimizer state_dict read lazily.

    Raises:
        CorruptCheckpointError: two param ids got the same name.
    """
    from adamscope.readers.optim_state import group_ids

    out: dict[str, TensorSlots] = {}
    ids = [pid for group in group_ids(sd, source=source) for pid in group]
    for name, pid in zip(names, ids, strict=True):
        entry = sd["state"].get(pid)
        if not isinstance(entry, dict) or not is_tensor_like(entry.get("exp_avg")):
            continue  # never stepped (frozen): no state to reset
        if name in out:
            raise CorruptCheckpointError(f"{source}: two optimizer parameters are named {name!r}")
        moments = {
            k: [lazy_zero(entry[k], source=source, what=f"'{name}' {k}")]
            for k in STATE_TENSORS
            if is_tensor_like(entry.get(k))
        }
        step, note = entry.get("step"), ""
        step_edits = None
        if is_tensor_like(step) and step.numel == 1:
            step_edits = [lazy_zero(step, source=source, what=f"'{name}' step")]
        else:
            note = "its step is not a tensor of its own"
        out[name] = TensorSlots(
            name=name,
            numel=entry["exp_avg"].numel,
            moments=moments,
            step=step_edits,
            step_note=note,
        )
    return out


def eps_slots(sd: dict, *, window: Window, path: tuple, label: str) -> list[EpsSlot]:
    """One EpsSlot per param group of the optimizer state_dict at `path` of the pickled root."""
    return [
        EpsSlot(
            label=f"{label}param_groups[{g}]",
            window=window,
            path=(*path, "param_groups", g, "eps"),
        )
        for g in range(len(sd["param_groups"]))
    ]


def lazy_tensors(tree: Any) -> Iterator[Any]:
    """Every lazy tensor in an unpickled tree (dicts, lists, tuples, stubs)."""
    from adamscope.readers.torchzip import LazyTensor

    stack, seen = [tree], set()
    while stack:
        node = stack.pop()
        if isinstance(node, LazyTensor):
            yield node
        elif isinstance(node, dict | list | tuple) and id(node) not in seen:
            seen.add(id(node))
            stack.extend(node.values() if isinstance(node, dict) else node)


def check_unshared(trees: list[Any], edits: list[Edit], *, source: str) -> None:
    """Refuses edits whose bytes are also bytes of a tensor that is kept (a storage shared by a
    reset tensor and a kept one: zeroing it would change the kept one too).

    Raises:
        UnsupportedFormatError: naming the kept tensor's shape and storage.
    """
    zeroed = sorted((e.window.file, e.offset, e.offset + e.nbytes) for e in edits if e.data is None)
    if not zeroed:
        return
    for tree in trees:
        for t in lazy_tensors(tree):
            start, _ = t.archive.storage_span(t.storage.key)
            lo = start + t.storage_offset * t.itemsize
            hi = lo + max(1, t.numel) * t.itemsize
            for f, a, b in zeroed:
                if f == t.archive.path and a < hi and lo < b and not (a <= lo and hi <= b):
                    raise UnsupportedFormatError(
                        f"{source}: storage '{t.storage.key}' is shared by a reset tensor and a "
                        f"kept tensor of shape {t.shape}; cannot reset one alone"
                    )


def layout(reader: Any) -> Layout:
    """The Layout of a TorchOptimReader, NanoGPTReader or LightningReader's file."""
    from adamscope.readers.lightning import LightningReader
    from adamscope.readers.naming import model_entries
    from adamscope.readers.nanogpt import OPTIM_KEYS, NanoGPTReader, _split
    from adamscope.readers.optim_state import names_from_model

    path, source = reader.path, str(reader.path)
    window = window_of(path)
    # (path of the optimizer state_dict in the pickled tree, the state_dict, its names, label)
    optims: list[tuple[tuple, dict, list[str], str]] = []
    if isinstance(reader, NanoGPTReader):
        tree = reader.tree
        model, optim = _split(tree)  # what the reader read: the same two entries
        key = next(k for k in OPTIM_KEYS if tree.get(k) is optim)
        names = names_from_model(optim, model_entries(model, source=source), source=source)
        optims.append(((key,), tree[key], names, f"{key}."))
    elif isinstance(reader, LightningReader):
        tree = reader.tree
        entries = model_entries(tree["state_dict"], source=source)
        for k, sd in reader._optimizers():
            what = f"optimizer_states[{k}]"
            names = names_from_model(sd, entries, source=source, what=what)
            optims.append((("optimizer_states", k), sd, names, f"{what}."))
    else:
        tree = reader.optim_sd
        optims.append(((), tree, reader.names(), ""))
    tensors: dict[str, TensorSlots] = {}
    eps: list[EpsSlot] = []
    for at, sd, names, label in optims:
        for name, slots in optim_slots(sd, names, source=source).items():
            if name in tensors:
                raise CorruptCheckpointError(f"{source}: two optimizers hold '{name}'")
            tensors[name] = slots
        eps += eps_slots(sd, window=window, path=at, label=label)
    return Layout(
        format=reader.name,
        root=path,
        files=[path],
        tensors=tensors,
        eps=eps,
        step=reader.describe().step,
        trees=[tree],
    )
