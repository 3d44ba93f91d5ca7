"""Reader for Hugging Face Trainer `checkpoint-N/` folders: optimizer.pt, named via config.json.

The Trainer builds AdamW from two groups: group 0 holds the parameters that get weight decay,
group 1 the rest (biases and norm weights), each in `model.named_parameters()` order of the
parameters that require grad. optimizer.pt stores positions only, so names are recovered in one of
three ways (naming/hf.py, naming/peft.py, naming/match.py):

(a) transformers importable (the reliable way): build the model from config.json on the meta device
    (no memory, no weights, no remote code), split its parameters with transformers' own
    `Trainer.get_decay_parameter_names`, and place the optimizer's groups in them by shape. Frozen
    parameters (requires_grad=False) are absent from the optimizer and recorded nowhere: each
    group is an order-preserving subsequence of the model's, and a position that several
    placements fill differently is marked ambiguous. A checkpoint written by transformers 4.x and
    read with 5.x keeps the names its model.safetensors records where 5.x renamed a parameter
    (GPT-NeoX `embed_out`), with a warning. Shapes that fit no placement raise NamingError.
(b) otherwise, or when the model cannot be built: names and shapes from model.safetensors (or its
    index). safetensors stores keys alphabetically, so the order is reconstructed: a parameter
    goes to group 1 when its name looks like a bias or norm (the Trainer's patterns) or it has
    fewer than two dimensions, else to group 0; within a group it is placed by shape. Names that
    share a shape within a group are ordered only by what the module tree guarantees (a module's
    own parameters before its sub-modules', list children in index order). Where that leaves
    several candidates for a position, the name says so instead of guessing:
    `model.layers.0.self_attn.{o_proj|q_proj}.weight#1` (braces: the candidates; `#k`: the k-th
    position with that same marker, added only to keep names unique; more than four candidates
    are written `{any of N}`); the TensorState carries a note with the full list and a warning is
    logged. The file also holds what the optimizer lacks (frozen parameters, buffers such as
    BART's final_logits_bias): a shape with more stored tensors than optimizer positions makes
    those positions ambiguous. A tied head is stored once; `lm_head.weight` stored beside the
    embedding counts as tied only when config.json says tie_word_embeddings.
(c) PEFT: adapter_model.safetensors + adapter_config.json instead of model.safetensors: names from
    the adapter file, ordered by the LoRA layer's layout and, with `--model <base model folder>`
    and transformers, by the base model's module order (exact).

Under FSDP or DeepSpeed the Trainer writes other layouts (optimizer.bin, optimizer_0/,
global_stepN/); they raise UnsupportedFormatError for now.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adamscope.config import ReaderOptions
from adamscope.errors import CorruptCheckpointError, UnsupportedFormatError
from adamscope.readers.naming.hf import (
    CannotBuild,
    names_from_config,
    names_from_safetensors,
    read_config,
    stored_tensors,
)
from adamscope.readers.naming.match import Match
from adamscope.readers.naming.peft import is_adapter_folder, names_from_adapter
from adamscope.vocab import CheckpointInfo, TensorState

log = logging.getLogger(__name__)

OPTIMIZER = "optimizer.pt"


class HFTrainerReader:
    """A `checkpoint-N/` folder written by `transformers.Trainer` (single process or DDP)."""

    name = "hf-trainer"

    @classmethod
    def probe(cls, path: Path) -> bool:
        folder = _folder(path)
        if folder is None:
            return False
        if _run_root(folder):
            return False
        return (folder / "trainer_state.json").is_file() or (
            (folder / OPTIMIZER).is_file() and (folder / "config.json").is_file()
        )

    def __init__(self, path: Path, *, options: ReaderOptions) -> None:
        folder = _folder(path)
        if folder is None:
            raise UnsupportedFormatError(f"{path}: not a Hugging Face Trainer checkpoint folder")
        _check_layout(folder)
        self.path = folder
        self.options = options
        self._sd: Any = None
        self._names: list[str] | None = None
        self._ambiguous: dict[int, list[str]] = {}
        self._method = ""
        self._how = ""

    # -- the reader surface -------------------------------------------------------------------
    def describe(self) -> CheckpointInfo:
        from adamscope.readers.optim_state import adam_state, check_adam

        step = self._global_step()  # first: a broken trainer_state.json fails before naming
        sd = self._state_dict()
        source = str(self.path / OPTIMIZER)
        check_adam(sd, source=source)  # SGD/Adafactor/...: the same line as iter_tensors
        names = self._param_names()
        state = adam_state(sd, source=source)
        shapes = [_shape(s["exp_avg"]) for s in state.values() if "exp_avg" in s]
        notes = [f"names: {self._method}"]
        if self._ambiguous:
            notes.append(f"{len(self._ambiguous)} of {len(names)} names ambiguous (marked {{a|b}})")
        return CheckpointInfo(
            path=self.path,
            format=self.name,
            step=step,
            n_tensors=len(shapes),
            n_params=sum(_numel(s) for s in shapes),
            bytes_on_disk=(self.path / OPTIMIZER).stat().st_size,
            notes=tuple(notes),
        )

    def weights(self) -> dict[str, Any] | None:
        """model.safetensors (or its index's shards) as lazy tensors, or None when absent."""
        from adamscope.readers import safetensors_io
        from adamscope.readers.naming import strip_compile_prefix

        files = safetensors_io.model_files(self.path)
        return safetensors_io.lazy_tensors(files, rename=strip_compile_prefix) if files else None

    def iter_tensors(self) -> Iterator[TensorState]:
        from adamscope.readers.optim_state import check_adam, iter_adam_states

        source = str(self.path / OPTIMIZER)
        check_adam(self._state_dict(), source=source)  # SGD/Adafactor: say so before naming
        names = self._param_names()
        by_name = {names[i]: cands for i, cands in self._ambiguous.items()}
        for ts in iter_adam_states(self._state_dict(), names, source=source, options=self.options):
            cands = by_name.get(ts.name)
            if cands:
                ts.notes.append(f"name ambiguous ({self._how}): one of " + ", ".join(cands))
            yield ts

    # -- internals -----------------------------------------------------------------------------
    def _state_dict(self) -> Any:
        if self._sd is None:
            from adamscope.readers.torchzip import load_lazy

            f = self.path / OPTIMIZER
            sd = load_lazy(f, trust_pickle=self.options.trust_pickle)
            if not isinstance(sd, dict) or "state" not in sd or "param_groups" not in sd:
                raise UnsupportedFormatError(
                    f"{f}: not an optimizer state_dict (no state/param_groups)"
                )
            _check_ids(sd, source=str(f))
            self._sd = sd
        return self._sd

    def _global_step(self) -> int | None:
        """trainer_state.json's global_step (read with a byte cap: a FIFO, a file of GBs, bad
        JSON or a step that is not an integer is a broken checkpoint); without the file, the
        folder name's number."""
        from adamscope.readers import guard

        f = self.path / "trainer_state.json"
        if not os.path.lexists(f):
            m = re.search(r"(\d+)$", self.path.name)
            return int(m.group(1)) if m else None
        state = guard.read_json(f, what="trainer_state.json")
        step = state.get("global_step") if isinstance(state, dict) else None
        return None if step is None else guard.finite_int(step, source=f, what="global_step")

    def _param_names(self) -> list[str]:
        from adamscope.readers.optim_state import adam_state, param_names_from_groups

        if self._names is not None:
            return self._names
        sd = self._state_dict()
        state = adam_state(sd, source=str(self.path / OPTIMIZER))  # bitsandbytes: state1 -> m
        shapes = {int(i): _shape(s["exp_avg"]) for i, s in state.items() if "exp_avg" in s}
        pattern = [[shapes.get(int(p)) for p in g["params"]] for g in sd["param_groups"]]
        stored = param_names_from_groups(sd)
        if stored is not None:
            self._names, self._method = stored, "param_names stored in optimizer.pt"
            return stored
        match, self._method, how, fix = self._match(pattern)
        self._names, self._ambiguous, self._how = match.names, match.ambiguous, how
        if match.extra:
            listed = ", ".join(match.unused[:4]) + (", ..." if len(match.unused) > 4 else "")
            log.warning(
                "%s: %d tensors of the %s have no optimizer entry (frozen, or buffers)%s",
                self.path,
                match.extra,
                "model" if how.startswith("model") else "stored files",
                f": {listed}" if listed else "",
            )
        if match.ambiguous:
            log.warning(
                "%s: %d of %d parameter names are ambiguous by shape and marked {a|b}; %s",
                self.path,
                len(match.ambiguous),
                len(match.names),
                fix,
            )
        return self._names

    def _match(self, pattern: list[list[tuple[int, ...] | None]]) -> tuple[Match, str, str, str]:
        """(names, the method for describe(), the method for notes, the fix for ambiguity)."""
        model = Path(self.options.model) if self.options.model else None
        source = self.path / OPTIMIZER
        if is_adapter_folder(self.path):
            match, how = names_from_adapter(self.path, pattern, source=source, base=model)
            fix = ADAPTER_FIX if "LoRA layer order" in how else FROZEN_FIX
            return match, f"names from {how}", "adapter file", fix
        # --model: a folder (config.json and/or model.safetensors) or one model .safetensors file
        config_dir = (model.parent if model.is_file() else model) if model else self.path
        weights = model if model and model.is_file() else None
        stored = _shapes_of(weights) if weights else stored_tensors(config_dir)
        stored = stored or stored_tensors(self.path)
        try:
            match, _hint = names_from_config(config_dir, pattern, source=source, stored=stored)
            method = f"model built on the meta device from {config_dir / 'config.json'}"
            return match, method, "model from config.json", FROZEN_FIX
        except CannotBuild as e:
            log.warning("%s: %s; matching names by shape from model.safetensors", self.path, e)
        what = str(weights) if weights else "model.safetensors"
        match, notes = names_from_safetensors(
            stored, pattern, source=source, config=read_config(config_dir), what=what
        )
        for note in notes:
            log.info("%s: %s", self.path, note)
        return match, f"matched by shape from {what}", "safetensors shapes only", SHAPES_FIX


ADAPTER_FIX = (
    "pass --model <base model folder with config.json> (transformers installed) to order the "
    "adapter's tensors exactly"
)
FROZEN_FIX = (
    "the files do not record which parameters were frozen; save the optimizer with param_names "
    "(torch >= 2.6, built from named_parameters()) to name them exactly"
)
SHAPES_FIX = "install transformers (pip install 'adamscope[hf]') to name them exactly"


def _shapes_of(file: Path) -> dict[str, tuple[int, ...]]:
    from adamscope.errors import NamingError
    from adamscope.readers import safetensors_io

    if file.suffix != ".safetensors":
        raise NamingError(
            f"{file}: --model for a Trainer checkpoint is a folder with config.json or "
            "model.safetensors, or a .safetensors file"
        )
    return safetensors_io.shapes(file)


def _check_ids(sd: Any, *, source: str) -> None:
    """Param ids (in groups and state) must be integers and state entries dicts: the Trainer's
    optimizer.pt is a plain torch state_dict; anything else is a damaged file."""
    from adamscope.readers.optim_state import group_ids, is_optim_state_dict

    if not is_optim_state_dict(sd):
        raise CorruptCheckpointError(f"{source}: state/param_groups have the wrong types")
    ids = [p for g in group_ids(sd, source=source) for p in g]
    if not all(isinstance(p, int) for p in [*ids, *sd["state"]]):
        raise CorruptCheckpointError(f"{source}: optimizer param ids are not all integers")
    if not all(isinstance(e, dict) for e in sd["state"].values()):
        raise CorruptCheckpointError(f"{source}: optimizer state entries are not all dicts")


def _folder(path: Path) -> Path | None:
    path = Path(path)
    if path.is_file() and path.name == OPTIMIZER:
        path = path.parent
    return path if path.is_dir() else None


def _run_root(folder: Path) -> bool:
    """A Trainer run's output_dir: checkpoint-N/ folders inside and no optimizer state of its own
    (what save_model()/save_state() write at the root is model.safetensors, config.json and
    trainer_state.json: the run_clm.py layout, or save_total_limit=1)."""
    own = (OPTIMIZER, "optimizer.bin", "latest")
    if any((folder / f).exists() for f in own) or any(folder.glob("optimizer_*")):
        return False
    if any(folder.glob("global_step*")):
        return False
    return any(c.is_dir() and re.fullmatch(r"checkpoint-\d+", c.name) for c in folder.iterdir())


def _check_layout(folder: Path) -> None:
    if (folder / OPTIMIZER).is_file():
        return
    ds = sorted(p.name for p in folder.glob("global_step*") if p.is_dir())
    if ds or (folder / "latest").is_file():
        where = f" ({ds[-1]}/)" if ds else ""
        raise UnsupportedFormatError(
            f"{folder}: holds a DeepSpeed checkpoint{where}, not a plain optimizer.pt; the "
            "hf-trainer reader does not read it — pass the DeepSpeed folder itself"
        )
    if (folder / "optimizer.bin").is_file() or any(folder.glob("optimizer_*")):
        raise UnsupportedFormatError(
            f"{folder}: holds an FSDP optimizer state (optimizer.bin or optimizer_0/), which the "
            "hf-trainer reader does not support yet"
        )
    raise UnsupportedFormatError(
        f"{folder}: no {OPTIMIZER} (saved with save_only_model=True?): no Adam state to read"
    )


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


__all__ = ["HFTrainerReader"]
