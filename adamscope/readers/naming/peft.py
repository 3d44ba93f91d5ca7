"""Names of a PEFT (LoRA, ...) Trainer checkpoint from its adapter file: `checkpoint-N/` holds
adapter_model.safetensors, adapter_config.json and an optimizer.pt over the adapter tensors only.

The adapter file names every trainable tensor (`base_model.model.<module>.lora_A.weight`: PEFT's
runtime name without the adapter name, e.g. `.default`); those names are what we report. The
Trainer groups them with its usual decay rule, in `named_parameters()` order. Keys are stored
alphabetically, so the order comes from what is known about it:
- within one LoRA layer, PEFT declares base_layer, lora_dropout, lora_A, lora_B, lora_embedding_A,
  lora_embedding_B, lora_magnitude_vector in that order (peft's LoraLayer.__init__);
- the order of the base model's modules (q_proj before v_proj) is not in the checkpoint: with
  transformers and `--model <base model folder with config.json>`, the base model is built on the
  meta device and its `named_modules()` order is used; otherwise positions that shapes cannot
  tell apart are marked `{a|b}`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from adamscope.errors import NamingError
from adamscope.readers.naming.hf import Pattern, no_decay
from adamscope.readers.naming.match import Match, Rank, place_by_tree

log = logging.getLogger(__name__)

ADAPTER = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_PREFIX = "base_model.model."
_LORA_ORDER = {
    k: i
    for i, k in enumerate(
        (
            "base_layer",
            "lora_dropout",
            "lora_A",
            "lora_B",
            "lora_embedding_A",
            "lora_embedding_B",
            "lora_magnitude_vector",
        )
    )
}


def is_adapter_folder(folder: Path) -> bool:
    return (folder / ADAPTER).is_file() and (folder / ADAPTER_CONFIG).is_file()


def names_from_adapter(
    folder: Path, pattern: Pattern, *, source: Path, base: Path | None
) -> tuple[Match, str]:
    """Names in optimizer position order from `folder`'s adapter file, and how they were ordered.

    Args:
        base: a folder with the base model's config.json (`--model`), for the exact module order.

    Raises:
        NamingError: the optimizer's groups and shapes do not fit the adapter's tensors.
    """
    from adamscope.readers import safetensors_io

    if len(pattern) != 2:
        raise NamingError(
            f"{source}: {len(pattern)} param groups, not the Trainer's two (decay, no-decay)"
        )
    shapes = safetensors_io.shapes(folder / ADAPTER)
    split: list[list[str]] = [[], []]
    for name, shape in shapes.items():
        split[int(no_decay(name, shape))].append(name)
    rank, how = _lora_rank, f"{ADAPTER}, LoRA layer order"
    if base is not None:
        order = _base_module_order(base)
        if order is not None:
            rank, how = _with_base(order), f"{ADAPTER}, module order of {base / 'config.json'}"
    match = place_by_tree(pattern, split, shapes, source=str(source), what=ADAPTER, rank=rank)
    return match, how


def _lora_rank(path: str, child: str) -> int | None:
    return _LORA_ORDER.get(child)


def _with_base(order: dict[str, int]) -> Rank:
    def rank(path: str, child: str) -> int | None:
        full = f"{path}.{child}" if path else child
        if full.startswith(_PREFIX):
            found = order.get(full[len(_PREFIX) :])
            if found is not None:
                return found
        return _LORA_ORDER.get(child)

    return rank


def _base_module_order(base: Path) -> dict[str, int] | None:
    """module path -> position in the base model's named_modules(), or None (logged) when the
    base model cannot be built."""
    from adamscope.readers.naming.hf import CannotBuild, build_meta_model

    try:
        model = build_meta_model(base)
    except CannotBuild as e:
        log.warning("%s: %s; adapter names ordered by the LoRA layer only", base, e)
        return None
    return {name: i for i, (name, _) in enumerate(model.named_modules()) if name}
