"""Names of a bare optimizer state_dict from model weights in safetensors: the model.safetensors that
Accelerate's `save_state()` writes beside optimizer.bin, or `--model <file or folder>`.

The file gives names and shapes but neither the parameter order (keys are alphabetical) nor how
the training script grouped the parameters. One group is the model order of the trainable
parameters; with two groups, the common groupings are tried — the Trainer's decay rule,
`no_decay = ["bias", "layer_norm.weight"]` (run_clm_no_trainer.py and the other Accelerate
examples), `["bias", "LayerNorm.weight"]` (the BERT-era scripts), and nanoGPT's dim split — and
only those that fit every shape are kept; if several fit with different names, each position gets
the candidates of all of them. With `--model <folder with config.json>` and transformers, the model
built on the meta device gives the exact order. Positions the shapes leave open are marked `{a|b}`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from adamscope.errors import NamingError
from adamscope.readers.naming.hf import (
    CannotBuild,
    Pattern,
    build_meta_model,
    no_decay,
    parameter_shapes,
    read_config,
)
from adamscope.readers.naming.match import Match, Shape, merge, place_by_tree, place_in_order

GROUPINGS: dict[str, Callable[[str, Shape], bool]] = {  # label -> "in the second group"
    "the Trainer's decay rule": no_decay,
    'no_decay = ["bias", "layer_norm.weight"]': lambda n, s: (
        "bias" in n or "layer_norm.weight" in n
    ),
    'no_decay = ["bias", "LayerNorm.weight"]': lambda n, s: "bias" in n or "LayerNorm.weight" in n,
    "dim >= 2 / dim < 2": lambda n, s: len(s) < 2,
}


def names_from_weights(
    stored: dict[str, Shape], pattern: Pattern, *, source: str, what: str, config_dir: Path | None
) -> tuple[Match, str]:
    """Names in optimizer position order from the tensors of a model weights file, and the
    grouping and order that were used.

    Raises:
        NamingError: no known grouping fits the optimizer's groups and shapes.
    """
    order = _meta_order(config_dir) if config_dir is not None else None
    shapes, _ = parameter_shapes(stored, read_config(config_dir) if config_dir else None)
    if order is not None:
        shapes = {n: s for n, s in order}
    elif not shapes:
        raise NamingError(
            f"{source}: no tensors to take names from: install transformers to build the model "
            f"of {config_dir}/config.json, or pass --model <model.safetensors>"
        )
    rules = {"one group": None} if len(pattern) == 1 else GROUPINGS if len(pattern) == 2 else {}
    fits: dict[str, Match] = {}
    for label, rule in rules.items():
        names = [n for n, _ in order] if order is not None else list(shapes)
        split = [names] if rule is None else [[], []]
        if rule is not None:
            for n in names:
                split[int(rule(n, shapes[n]))].append(n)
        try:
            if order is not None:
                fits[label] = place_in_order(
                    pattern, [[(n, shapes[n]) for n in g] for g in split], source=source, what=what
                )
            else:
                fits[label] = place_by_tree(pattern, split, shapes, source=source, what=what)
        except NamingError:
            continue
    if not fits:
        raise NamingError(
            f"{source}: its {len(pattern)} param groups fit none of the known groupings of the "
            f"{len(shapes)} tensors of {what} by shape; pass --model with a torch.save'd "
            "state_dict of the optimized parameters in order, or build the optimizer from "
            "named_parameters() (torch >= 2.6 stores param_names)"
        )
    where = f"the model built from {config_dir}/config.json" if order else f"shapes of {what}"
    how = f"{' or '.join(fits)}, {where}"
    return merge(list(fits.values())), how


def _meta_order(config_dir: Path) -> list[tuple[str, Shape]] | None:
    try:
        model = build_meta_model(config_dir)
    except CannotBuild:
        return None
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]
