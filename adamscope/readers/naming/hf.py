"""Parameter names of a Hugging Face Trainer's optimizer.pt (see readers/hf_trainer.py for the
two ways): (a) the model built from config.json on the meta device, split with transformers' own
decay rule; (b) without transformers, names and shapes from model.safetensors, with the positions
that shapes cannot tell apart marked `{a|b}` instead of guessed. Both allow parameters the
optimizer does not hold (frozen) and, in (b), stored tensors that are no parameter (buffers).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from adamscope.errors import NamingError
from adamscope.readers.naming.match import Match, Shape, place_by_tree, place_in_order

log = logging.getLogger(__name__)

# The Trainer's no-decay name patterns (transformers 5.x), applied to the lower-cased name.
_NO_DECAY = [
    re.compile(p)
    for p in (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
]
Pattern = list[list[Shape | None]]  # per optimizer group, the exp_avg shape of each position


def no_decay(name: str, shape: Shape) -> bool:
    """The Trainer's rule without the model: a bias/norm name, or fewer than two dimensions (the
    Trainer's nn.LayerNorm exclusion, which the name alone cannot show)."""
    return len(shape) < 2 or any(p.search(name.lower()) for p in _NO_DECAY)


def read_config(folder: Path) -> dict[str, Any] | None:
    """config.json of `folder` as JSON (never through transformers), None when absent/unreadable."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


# -- (a) names from the model built on the meta device ----------------------------------------
class CannotBuild(Exception):
    """transformers is missing or cannot build this config: fall back to safetensors shapes."""


def build_meta_model(config_dir: Path) -> Any:
    """transformers' model of `config_dir/config.json` on the meta device (no weights, no remote
    code). Raises CannotBuild."""
    try:
        import torch
        import transformers
    except ImportError as e:
        raise CannotBuild(f"transformers is not importable ({e})") from None
    if not (config_dir / "config.json").is_file():
        raise CannotBuild(f"no config.json in {config_dir}")
    try:
        config = transformers.AutoConfig.from_pretrained(
            str(config_dir), local_files_only=True, trust_remote_code=False
        )
        arch = next(iter(getattr(config, "architectures", None) or []), None)
        cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
        with torch.device("meta"):
            # Only transformers' own model classes: a name from a file must never pick any callable.
            if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
                return cls(config)
            return transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - any failure to build means "use the fallback", logged
        raise CannotBuild(
            f"cannot build the model from config.json ({type(e).__name__}: {e})"
        ) from None


def names_from_config(
    config_dir: Path, pattern: Pattern, *, source: Path, stored: dict[str, Any]
) -> tuple[Match, str]:
    """Names in optimizer position order from the model of `config_dir/config.json`, and a hint
    naming the transformers versions (written / installed).

    Parameters the optimizer does not hold (frozen) are allowed: each group must be an
    order-preserving subsequence of the model's parameters of that group, and a position that
    several placements fill differently is marked ambiguous. `stored` (model.safetensors' tensors,
    may be empty) is checked against the names when the checkpoint was written by another major
    version of transformers (see `_version_skew`).

    Raises:
        CannotBuild: transformers is not importable or the model cannot be built.
        NamingError: the model's parameters cannot hold the optimizer's groups and shapes.
    """
    model = build_meta_model(config_dir)
    import transformers

    decay = _decay_names(model)
    params = [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]
    split = [[x for x in params if x[0] in decay], [x for x in params if x[0] not in decay]]
    written = getattr(model.config, "transformers_version", None) or "?"
    hint = f"checkpoint written by transformers {written}, read with {transformers.__version__}"
    want, have = [len(g) for g in pattern], [len(g) for g in split]
    if len(want) != 2 or any(w > h for w, h in zip(want, have, strict=True)):
        raise NamingError(
            f"{source}: optimizer groups hold {want} parameters but the model from config.json "
            f"gives {have} (decay, no-decay) ({hint}); added parameters (PEFT?) or a custom "
            "optimizer cannot be named"
        )
    if want == have:
        for g, (shapes, named) in enumerate(zip(pattern, split, strict=True)):
            for i, (have_shape, (name, shape)) in enumerate(zip(shapes, named, strict=True)):
                if have_shape is not None and have_shape != shape:
                    pid = sum(want[:g]) + i
                    raise NamingError(
                        f"{source}: param id {pid} has exp_avg shape {list(have_shape)} but the model "
                        f"from config.json puts {name} {list(shape)} there ({hint})"
                    )
    match = place_in_order(pattern, split, source=str(source), what="config.json's model")
    _version_skew(match, dict(params), stored, written, transformers.__version__, source=source)
    return match, hint


def _version_skew(
    match: Match,
    params: dict[str, Shape],
    stored: dict[str, Any],
    written: str,
    installed: str,
    *,
    source: Path,
) -> None:
    """Names the training code used when transformers has renamed parameters since.

    transformers 4.x saves parameters under their module names, so model.safetensors of a 4.x
    checkpoint records the training code's names; 5.x renames some (GPT-NeoX `embed_out` ->
    `lm_head`) and writes the old names back on save, so a 5.x file may differ from its own
    training names. Hence: same major version -> the built names; written by 4.x, read with a
    later major -> a built name missing from the file is replaced by the one stored tensor of
    its shape that the model does not name (warned), else kept (warned); otherwise a warning.
    """
    major_w, major_i = written.split(".")[0], installed.split(".")[0]
    if major_w == major_i:
        return
    skew = f"checkpoint written by transformers {written}, read with {installed}"
    missing = [n for n in match.names if "{" not in n and stored and n not in stored]
    if not (major_w == "4" and major_i.isdigit() and int(major_i) > 4 and stored):
        log.warning(
            "%s: %s: names are the installed version's, the training code's may differ",
            source,
            skew,
        )
        return
    unclaimed = [n for n in stored if n not in params]
    for name in missing:
        same = [n for n in unclaimed if tuple(stored[n]) == params[name]]
        if len(same) == 1 and sum(params[m] == params[name] for m in missing) == 1:
            match.names[match.names.index(name)] = same[0]
            log.warning(
                "%s: %s: %s is stored as %s, the training code's name: named so",
                source,
                skew,
                name,
                same[0],
            )
        else:
            log.warning(
                "%s: %s: %s is not in model.safetensors; the training code may have "
                "named it otherwise",
                source,
                skew,
                name,
            )


def _decay_names(model: Any) -> set[str]:
    try:
        from transformers import Trainer

        # The method does not use `self` (5.x); calling it keeps us on the installed rule.
        return set(Trainer.get_decay_parameter_names(None, model))
    except Exception as e:  # noqa: BLE001 - fall back to the same rule, written out
        log.debug("Trainer.get_decay_parameter_names unusable (%s); applying its rule directly", e)
    import torch

    out: set[str] = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, torch.nn.LayerNorm):
            continue
        for p_name, _ in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if not any(p.search(full.lower()) for p in _NO_DECAY):
                out.add(full)
    return out


# -- (b) names matched by shape from model.safetensors ----------------------------------------
def stored_tensors(folder: Path) -> dict[str, Shape]:
    """name -> shape of model.safetensors (or its index's shards) in `folder`; {} when none."""
    from adamscope.readers import safetensors_io

    out: dict[str, Shape] = {}
    for f in safetensors_io.model_files(folder):
        out.update(safetensors_io.shapes(f))
    return out


def parameter_shapes(
    stored: dict[str, Shape], config: dict[str, Any] | None
) -> tuple[dict[str, Shape], list[str]]:
    """The stored tensors that can be optimizer parameters, and notes on those left out: torch's
    BatchNorm buffers, and `lm_head.weight` when config.json says the head is tied (then it is the
    embedding, stepped once). Other buffers and frozen parameters stay candidates (`place_by_tree`
    lets a shape have more candidates than positions).
    """
    from adamscope.readers.naming import KNOWN_BUFFER_SUFFIXES

    shapes: dict[str, Shape] = {}
    notes: list[str] = []
    for name, shape in stored.items():
        if name.rsplit(".", 1)[-1] in KNOWN_BUFFER_SUFFIXES:
            notes.append(f"{name} is a BatchNorm buffer")
        else:
            shapes[name] = tuple(shape)
    head = shapes.get("lm_head.weight")
    tied = (config or {}).get("tie_word_embeddings") is True
    if tied and head is not None and sum(s == head for s in shapes.values()) > 1:
        del shapes["lm_head.weight"]
        notes.append("lm_head.weight is tied to the input embedding (config.json)")
    return shapes, notes


def names_from_safetensors(
    stored: dict[str, Shape],
    pattern: Pattern,
    *,
    source: Path,
    config: dict[str, Any] | None,
    what: str = "model.safetensors",
) -> tuple[Match, list[str]]:
    """Names in optimizer position order matched by shape from model.safetensors' tensors
    (`stored`, see stored_tensors), and notes on the stored tensors left out. Stored tensors with
    no optimizer entry (frozen parameters, buffers) make the positions of their shape ambiguous,
    never wrongly named.

    Raises:
        NamingError: there is no model.safetensors, or groups and shapes cannot be matched.
    """
    if not stored:
        raise NamingError(
            f"{source.parent}: cannot name parameters: transformers is not usable and there is "
            "no model.safetensors(.index.json); install transformers or pass --model <model folder>"
        )
    if len(pattern) != 2:
        raise NamingError(
            f"{source}: {len(pattern)} param groups, not the Trainer's two (decay, no-decay); "
            "install transformers to name them"
        )
    shapes, notes = parameter_shapes(stored, config)
    split: list[list[str]] = [[], []]
    for name, shape in shapes.items():
        split[int(no_decay(name, shape))].append(name)
    match = place_by_tree(pattern, split, shapes, source=str(source), what=what)
    return match, notes
