"""nanoGPT-style `ckpt.pt`: a dict with `model` (state_dict) and `optimizer` (state_dict).

nanoGPT's configure_optimizers puts parameters with dim >= 2 in group 0 and dim < 2 in group 1, each
in named_parameters() order (which yields the tied lm_head.weight once, as transformer.wte.weight);
keys may carry torch.compile's `_orig_mod.` prefix. Names are recovered from the model state_dict
and checked against the optimizer's shapes (optim_state.names_from_model); the same reader
serves any training script that saves {'model': ..., 'optimizer': ...}.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adamscope.config import ReaderOptions
from adamscope.readers.naming import is_tensor_like, model_entries
from adamscope.readers.optim_state import (
    is_optim_state_dict,
    iter_adam_states,
    names_from_model,
    optim_info,
)
from adamscope.vocab import CheckpointInfo, TensorState

log = logging.getLogger(__name__)

MODEL_KEYS = ("model", "model_state_dict", "state_dict")
OPTIM_KEYS = ("optimizer", "optimizer_state_dict", "optim")


def _split(tree: Any) -> tuple[Any, Any] | None:
    if not isinstance(tree, dict):
        return None
    model = next((tree[k] for k in MODEL_KEYS if isinstance(tree.get(k), dict)), None)
    optim = next((tree[k] for k in OPTIM_KEYS if is_optim_state_dict(tree.get(k))), None)
    if model is None or optim is None or not any(is_tensor_like(v) for v in model.values()):
        return None
    return model, optim


class NanoGPTReader:
    """A single-file training checkpoint holding a model state_dict and an optimizer state_dict."""

    name = "nanogpt"

    @classmethod
    def probe(cls, path: Path) -> bool:
        from adamscope.readers.torchzip import peek_torch

        return _split(peek_torch(path)) is not None

    def __init__(self, path: Path, *, options: ReaderOptions) -> None:
        self.path = Path(path)
        self.options = options
        self._tree: dict | None = None

    @property
    def tree(self) -> dict:
        if self._tree is None:
            from adamscope.readers.torchzip import load_checked

            self._tree = load_checked(
                self.path,
                trust_pickle=self.options.trust_pickle,
                accept=lambda t: _split(t) is not None,
                expected="'model' + 'optimizer' state_dicts",
            )
        return self._tree

    def weights(self) -> dict[str, Any] | None:
        """The model state_dict stored beside the optimizer state (lazy tensors), or None."""
        from adamscope.errors import NamingError
        from adamscope.readers.naming import model_entries

        try:
            return dict(model_entries(self.tree, source=str(self.path)))
        except NamingError:
            return None

    def describe(self) -> CheckpointInfo:
        _, optim = _split(self.tree)  # type: ignore[misc]
        notes = []
        iter_num = self.tree.get("iter_num")
        if isinstance(iter_num, int):
            notes.append(f"iter_num={iter_num}")
        return optim_info(self.path, optim, fmt=self.name, step=None, notes=notes)

    def iter_tensors(self) -> Iterator[TensorState]:
        model, optim = _split(self.tree)  # type: ignore[misc]
        source = str(self.path)
        entries = model_entries(model, source=source)
        names = names_from_model(optim, entries, source=source)
        order = {name: i for i, (name, _) in enumerate(entries)}
        states = iter_adam_states(optim, names, source=source, options=self.options)
        # model order (ids run group 0, then group 1); TensorStates are lazy, so sorting is cheap
        yield from sorted(states, key=lambda ts: order.get(ts.name, len(order)))
