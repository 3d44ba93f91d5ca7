"""The reader for a bare `torch.save(optimizer.state_dict())` file (helpers: optim_state.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from adamscope.config import ReaderOptions
from adamscope.errors import NamingError, UnsupportedFormatError
from adamscope.readers import safetensors_io
from adamscope.readers.naming import align_names, model_entries, parameter_candidates
from adamscope.readers.naming.weights import names_from_weights
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
    built from named_parameters()); `ReaderOptions.model`: a torch.save'd model state_dict, whose
    float tensors (tied duplicates and BatchNorm buffers removed) must be exactly as many as the
    optimizer's parameters, in order, with matching shapes — otherwise NamingError, never a
    guess —, or a .safetensors file or a folder (config.json, model.safetensors) matched by shape
    (naming/weights.py); the model.safetensors saved beside the file (Accelerate's save_state());
    else `param.<id>` with a warning.
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
        self._ambiguous: dict[int, list[str]] = {}

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
        marked = {names[i]: c for i, c in self._ambiguous.items()}
        for ts in iter_adam_states(
            self.optim_sd, names, source=str(self.path), options=self.options
        ):
            if ts.name in marked:
                ts.notes.append(
                    "name ambiguous (shapes only): one of " + ", ".join(marked[ts.name])
                )
            yield ts

    def names(self) -> list[str]:
        sd, source = self.optim_sd, str(self.path)
        check_adam(sd, source=source)
        stored = param_names_from_groups(sd)
        if stored is not None:
            return stored
        model = Path(self.options.model) if self.options.model is not None else None
        if model is not None and model.suffix != ".safetensors" and not model.is_dir():
            return self._names_from_model(model)
        if model is not None:
            return self._names_from_weights(model)
        reason = ""
        if safetensors_io.model_files(self.path.parent):  # Accelerate's save_state() layout
            try:
                return self._names_from_weights(None)
            except NamingError as e:
                reason = f" ({e})"
        n = sum(len(ids) for ids in group_ids(sd, source=source))
        msg = f"no param_names stored and no --model given{reason}: naming parameters param.<id>"
        log.warning("%s: %s", source, msg)
        self.notes.append(msg)
        return [f"param.{i}" for i in range(n)]

    def _names_from_weights(self, model: Path | None) -> list[str]:
        """Names by shape from a .safetensors file, a model folder, or the file's own folder."""
        folder = model if model is not None and model.is_dir() else self.path.parent
        if model is not None and not model.is_dir():
            files = [model]
        else:
            files = safetensors_io.model_files(folder)
        if not files and folder != self.path.parent:  # a folder with config.json only
            files = safetensors_io.model_files(self.path.parent)
        stored = {k: s for f in files for k, s in safetensors_io.shapes(f).items()}
        what = str(files[0]) if len(files) == 1 else f"{folder}/{safetensors_io.INDEX}"
        has_config = (folder / "config.json").is_file()
        if not stored and not has_config:
            raise NamingError(
                f"{folder}: no model.safetensors(.index.json) or config.json to take names from"
            )
        pattern = state_shapes(self.optim_sd, source=str(self.path))
        match, how = names_from_weights(
            stored,
            pattern,
            source=str(self.path),
            what=what if stored else str(folder / "config.json"),
            config_dir=folder if has_config else None,
        )
        self._ambiguous = match.ambiguous
        self.notes.append(f"names: {how}")
        log.warning("%s: names matched by shape assuming %s", self.path, how)
        if match.ambiguous:
            log.warning(
                "%s: %d of %d parameter names are ambiguous by shape and marked {a|b}; build "
                "the optimizer from named_parameters() (torch >= 2.6 stores param_names) to name "
                "them exactly",
                self.path,
                len(match.ambiguous),
                len(match.names),
            )
        return match.names

    def _names_from_model(self, model_path: Path) -> list[str]:
        from adamscope.readers.torchzip import load_lazy

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
