"""PyTorch Distributed Checkpoint folders (FSDP2 `get_state_dict` + `dcp.save`, torchtitan, the
Trainer under FSDP): `.metadata` + `__R_I.distcp`.

Every tensor chunk, and every non-tensor value (a param group's eps, a step saved as a number), is
its own torch.save blob at a (file, byte offset, length) that `.metadata` records. Repair zeroes
the chunk's bytes inside its blob and fixes that blob's CRCs; an eps is the BINFLOAT of its blob's
`data.pkl`. No blob changes length, so `.metadata` and every other byte are copied as they are,
file by file (memory: a copy buffer; the dcp reader reads each chunk's zip headers only).
"""

from __future__ import annotations

from typing import Any

from adamscope.errors import UnsupportedFormatError
from adamscope.repair.plan import EpsSlot, Layout, TensorSlots
from adamscope.repair.torch_file import STATE_TENSORS
from adamscope.repair.zippatch import Edit, Window


def _window(chunk: Any) -> Window:
    return Window(chunk.file, chunk.byte_offset, chunk.length)


def _zero_chunks(entry: Any) -> list[Edit]:
    """Zeroing edits for every chunk of a tensor entry (one per shard)."""
    from adamscope.readers.dcp import _BlobTensor

    out = []
    for chunk in entry.chunks:
        blob = _BlobTensor(chunk)
        start = blob.data_start + blob.offset * blob.itemsize
        out.append(Edit(_window(chunk), start, blob.numel * blob.itemsize))
    return out


def layout(reader: Any) -> Layout:
    """The Layout of a DCPReader's folder (and of the Trainer checkpoint around optimizer_0/)."""
    from adamscope.repair.output import checkpoint_files

    tensors: dict[str, TensorSlots] = {}
    for name in reader.names:
        state = reader.states[name]
        moments = {k: _zero_chunks(state[k]) for k in STATE_TENSORS if k in state}
        step, note = state.get("step"), ""
        step_edits = None
        if step is not None and step.size is not None:
            step_edits = _zero_chunks(step)
        else:
            note = "its step is stored as a number, not a tensor"
        numel = 1
        for d in state["exp_avg"].size or ():
            numel *= d
        tensors[name] = TensorSlots(
            name=name, numel=numel, moments=moments, step=step_edits, step_note=note
        )
    eps = []
    for hps in reader.groups.values():
        entry = hps.get("eps")
        if entry is None:
            continue
        if entry.size is not None:
            raise UnsupportedFormatError(
                f"{reader.folder}: '{entry.key}' is a tensor; repair changes eps stored as a number"
            )
        eps.append(EpsSlot(label=entry.key, window=_window(entry.chunks[0]), path=()))
    return Layout(
        format=reader.name,
        root=reader.path,
        files=checkpoint_files(reader.path),
        tensors=tensors,
        eps=eps,
        step=reader.describe().step,
    )
