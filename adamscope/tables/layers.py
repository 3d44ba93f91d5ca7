"""Group parameter names into the layers a user thinks of (embedding, block i, head) in depth order."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# `<stack>.<index>.` where stack is how transformer implementations name their block list; the
# first such pair in the name is the block (T5's `encoder.block.0.layer.1.` is block 0)
_BLOCK = re.compile(
    r"^(?P<prefix>(?:.*?\.)?(?:h|layers|layer|blocks|block|decoder_layers|encoder_layers|resblocks))"
    r"\.(?P<idx>\d+)(?:\.|$)"
)
# the norm after an encoder's or a decoder's last block (T5 `encoder.final_layer_norm`, BART and
# Whisper `model.decoder.layer_norm`): the end of that stack, not the head
_STACK_NORM = re.compile(
    r"^(?P<root>(?:.*\.)?(?:encoder|decoder))\.(?:final_layer_norm|layer_norm|layernorm|final_norm"
    r"|norm|ln_f)\.(?:weight|bias)$"
)
_EMBED = re.compile(
    r"(?:^|\.)(?:wte|wpe|embed\w*|\w*_embeddings?|tok_embeddings|word_embeddings|position_embeddings"
    r"|embeddings|shared|emb)(?:\.|$)"
)
_HEAD = re.compile(
    r"(?:^|\.)(?:lm_head|ln_f|final_layer_norm|final_layernorm|norm_f|head|output|score|classifier"
    r"|output_layer|final_norm)(?:\.|$)|^(?:model\.|transformer\.|decoder\.)?norm\.(?:weight|bias)$"
    r"|^cls\.predictions\."  # BERT's masked-LM head
)


@dataclass(frozen=True)
class LayerOf:
    layer: str
    depth: int


def layer_key(name: str) -> tuple[str, str | None, int | None]:
    """The layer a name belongs to, from the name alone: (kind, stack prefix, block index).

    Two names share a layer exactly when they share this key; `assign_layers` turns keys into the
    labels and depths users see once every name is known.
    """
    m = _BLOCK.match(name)
    if m:
        return ("block", m.group("prefix"), int(m.group("idx")))
    m = _STACK_NORM.match(name)
    if m:
        return ("stack_norm", m.group("root"), None)
    if _EMBED.search(name):
        return ("embedding", None, None)
    if _HEAD.search(name):
        return ("head", None, None)
    return ("other", None, None)


def assign_layers(names: Sequence[str]) -> dict[str, LayerOf]:
    """Map each parameter name to its layer and depth.

    Depth order: embedding (0), then blocks by stack (in order of first appearance) and index, then
    tensors that match no pattern ("other"), then the head. A single block stack is named
    `block.<i>`; several stacks (encoder/decoder) keep their prefix: `<prefix>.<i>`. The norm
    after an encoder's or decoder's blocks is `<root>.final_norm`, right after that stack's last
    block (a decoder-only model's final norm, `ln_f` or `model.norm`, stays in the head).
    """
    kinds = {name: layer_key(name) for name in names}
    prefixes: list[str] = []
    for kind, prefix, _ in kinds.values():
        if kind == "block" and prefix not in prefixes:
            prefixes.append(prefix)

    single = len(prefixes) <= 1
    order: list[tuple[tuple[int, int, int], str]] = []
    layer_of_name: dict[str, str] = {}
    for name, (kind, prefix, idx) in kinds.items():
        if kind == "block":
            assert prefix is not None and idx is not None
            layer = f"block.{idx}" if single else f"{prefix}.{idx}"
            key = (1, prefixes.index(prefix), idx)
        elif kind == "stack_norm":
            stacks = [i for i, p in enumerate(prefixes) if p.startswith(f"{prefix}.")]
            layer = f"{prefix}.final_norm"
            key = (1, stacks[-1], 1 << 62) if stacks else (2, 0, 0)
        else:
            layer = kind
            key = {"embedding": (0, 0, 0), "other": (2, 0, 0), "head": (3, 0, 0)}[kind]
        layer_of_name[name] = layer
        order.append((key, layer))
    depth_of: dict[str, int] = {}
    for _, layer in sorted(set(order)):
        depth_of.setdefault(layer, len(depth_of))
    return {n: LayerOf(layer_of_name[n], depth_of[layer_of_name[n]]) for n in names}
