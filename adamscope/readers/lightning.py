"""Lightning `.ckpt` files: `state_dict` (parameters and buffers mixed) + `optimizer_states`.

Each entry of `optimizer_states` is a plain torch optimizer state_dict whose ids follow the order of
the parameters handed to it in configure_optimizers (usually LightningModule.parameters()). Names
are aligned from the state_dict by shape and count (optim_state.names_from_model) and a NamingError
is raised when more than one alignment fits. (A `.ckpt` *folder* is a DeepSpeed checkpoint, not
ours.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adamscope.config import ReaderOptions
from adamscope.errors import NotAdamError, UnsupportedFormatError
from adamscope.readers.naming import model_entries
from adamscope.readers.optim_state import (
    check_adam,
    is_optim_state_dict,
    iter_adam_states,
    names_from_model,
    optim_info,
)
from adamscope.vocab import CheckpointInfo, TensorState

log = logging.getLogger(__name__)


def _is_lightning(tree: Any) -> bool:
    return (
        isinstance(tree, dict)
        and isinstance(tree.get("state_dict"), dict)
        and isinstance(tree.get("optimizer_states"), list | tuple)
    )


class LightningReader:
    """A Lightning (lightning.pytorch / pytorch_lightning) `.ckpt` file."""

    name = "lightning"

    @classmethod
    def probe(cls, path: Path) -> bool:
        from adamscope.readers.torchzip import peek_torch

        return _is_lightning(peek_torch(path))

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
                accept=_is_lightning,
                expected="state_dict + optimizer_states",
            )
        return self._tree

    def _optimizers(self) -> list[tuple[int, dict]]:
        """(index, state_dict) of the Adam optimizers; others are skipped with a warning."""
        source = str(self.path)
        found, errors = [], []
        for k, sd in enumerate(self.tree["optimizer_states"]):
            if not is_optim_state_dict(sd):
                continue
            try:
                check_adam(sd, source=f"{source} optimizer_states[{k}]")
            except (NotAdamError, UnsupportedFormatError) as e:
                errors.append(e)
                continue
            found.append((k, sd))
        if not found:
            if errors:
                raise errors[0]
            raise UnsupportedFormatError(
                f"{source}: optimizer_states is empty (saved weights only?)"
            )
        for e in errors:
            log.warning("skipping %s", e)
        return found

    def weights(self) -> dict[str, Any] | None:
        """The model state_dict stored beside the optimizer state (lazy tensors), or None."""
        from adamscope.errors import NamingError
        from adamscope.readers.naming import model_entries

        try:
            return dict(model_entries(self.tree, source=str(self.path)))
        except NamingError:
            return None

    def describe(self) -> CheckpointInfo:
        optimizers = self._optimizers()
        step = self.tree.get("global_step")
        notes = [f"epoch={self.tree['epoch']}"] if isinstance(self.tree.get("epoch"), int) else []
        info = optim_info(
            self.path,
            optimizers[0][1],
            fmt=self.name,
            step=step if isinstance(step, int) else None,
            notes=notes,
        )
        if len(optimizers) > 1:
            extra = [
                optim_info(self.path, sd, fmt=self.name, step=None) for _, sd in optimizers[1:]
            ]
            info = CheckpointInfo(
                path=info.path,
                format=info.format,
                step=info.step,
                n_tensors=info.n_tensors + sum(e.n_tensors for e in extra),
                n_params=info.n_params + sum(e.n_params for e in extra),
                bytes_on_disk=info.bytes_on_disk,
                notes=info.notes + (f"{len(optimizers)} Adam optimizers",),
            )
        return info

    def iter_tensors(self) -> Iterator[TensorState]:
        source = str(self.path)
        entries = model_entries(self.tree["state_dict"], source=source)
        order = {name: i for i, (name, _) in enumerate(entries)}
        for k, sd in self._optimizers():
            what = f"optimizer_states[{k}]"
            names = names_from_model(sd, entries, source=source, what=what)
            states = iter_adam_states(sd, names, source=f"{source} {what}", options=self.options)
            yield from sorted(states, key=lambda ts: order.get(ts.name, len(order)))
