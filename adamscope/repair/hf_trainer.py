"""Hugging Face Trainer `checkpoint-N/`: optimizer.pt is edited like any torch.save optimizer
state_dict (torch_file.py), with the names the hf-trainer reader recovers; every other file
(model.safetensors, scheduler.pt, rng_state.pth, trainer_state.json, ...) is copied byte for byte.
"""

from __future__ import annotations

from typing import Any

from adamscope.repair.plan import Layout
from adamscope.repair.torch_file import eps_slots, optim_slots, window_of


def layout(reader: Any) -> Layout:
    """The Layout of an HFTrainerReader's folder."""
    from adamscope.readers.hf_trainer import OPTIMIZER
    from adamscope.repair.output import checkpoint_files

    folder = reader.path
    optimizer = folder / OPTIMIZER
    sd = reader._state_dict()
    names = reader._param_names()
    return Layout(
        format=reader.name,
        root=folder,
        files=checkpoint_files(folder),
        tensors=optim_slots(sd, names, source=str(optimizer)),
        eps=eps_slots(sd, window=window_of(optimizer), path=(), label=f"{OPTIMIZER} "),
        step=reader.describe().step,
        trees=[sd],
    )
