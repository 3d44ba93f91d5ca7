"""The reader for a bare `torch.save(optimizer.state_dict())` file (helpers: optim_state.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from adamscope.config import ReaderOptions
from adamscope.errors import NamingError, UnsupportedFormatError
from adamscope.readers.naming import align_names, model_entries, parameter_candidates
from adamscope.readers.optim_state import (
    check_adam,
    group_ids,
    is_optim_state_dict,
    iter_adam_states,
    optim_info,
    param_names_from_groups,
    state_shapes,
)
from adamscope.vocab import CheckpointInfo, TensorState

log = logging.getLogger(__name__)


class TorchOptimReader:
    """A bare `torch.save(optimizer.state_dict())` file.

    Names come from, in order of preference: `param_names` in the groups (torch >= 2.6, optimizer
    built from named_parameters()); a model state_dict given as `ReaderOptions.model`, whose float
    tensors (tied duplicates and BatchNorm buffers removed) must be exactly as many as the
    optimizer's parameters, in order, with matching shapes — otherwise NamingError, never a
    guess; else `param.<id>` with a warning.
    """

    name = "torch-optim"

    @classmethod
    def probe(cls, path: Path) -> bool:
        from adamscope.readers.torchzip import peek_torch

        return is_optim_state_dict(peek_torch(path))

    def __init__(self, path: Path, *, options: ReaderOptions) -> None:
        self.path = Path(path)
        self.options = options
        self._sd: dict | None = None
        self.notes: list[str] = []

    @property
    def optim_sd(self) -> dict:
        if self._sd is None:
            from adamscope.readers.torchzip import load_lazy

            sd = load_lazy(self.path, trust_pickle=self.options.trust_pickle)
            if not is_optim_state_dict(sd):
                raise UnsupportedFormatError(f"{self.path}: not an optimizer state_dict")
            self._sd = sd
        return self._sd

    def describe(self) -> CheckpointInfo:
        check_adam(self.optim_sd, source=str(self.path))
        return optim_info(self.path, self.optim_sd, fmt=self.name, step=None, notes=self.notes)

    def iter_tensors(self) -> Iterator[TensorState]:
        names = self.names()
        yield from iter_adam_states(
            self.optim_sd, names, source=str(self.path), options=self.options
        )

    def names(self) -> list[str]:
        sd, source = self.optim_sd, str(self.path)
        check_adam(sd, source=source)
        stored = param_names_from_groups(sd)
        if stored is not None:
            return stored
        if self.options.model is not None:
            return self._names_from_model(Path(self.options.model))
        n = sum(len(ids) for ids in group_ids(sd, source=source))
        msg = "no param_names stored and no --model given: naming parameters param.<id>"
        log.warning("%s: %s", source, msg)
        self.notes.append(msg)
        return [f"param.{i}" for i in range(n)]

    def _names_from_model(self, model_path: Path) -> list[str]:
        from adamscope.readers.torchzip import load_lazy

        if model_path.suffix == ".safetensors":
            raise NamingError(
                f"{model_path}: safetensors lists tensors alphabetically, not in parameter order; "
                "pass a torch.save'd model.state_dict() instead"
            )
        tree = load_lazy(model_path, trust_pickle=self.options.trust_pickle)
        candidates, _ = parameter_candidates(model_entries(tree, source=str(model_path)))
        pattern = [
            s for shapes in state_shapes(self.optim_sd, source=str(self.path)) for s in shapes
        ]
        if len(candidates) != len(pattern):
            raise NamingError(
                f"{self.path}: the optimizer has {len(pattern)} parameters but {model_path} has "
                f"{len(candidates)} float tensors (buffers or frozen parameters?); pass a "
                "state_dict of the optimized parameters only, e.g. "
                "{n: p for n, p in model.named_parameters()}"
            )
        return align_names(pattern, candidates, source=str(self.path), what="the optimizer")
