"""Layer assignment from parameter names, for the naming schemes of common model families."""

from adamscope.tables.layers import assign_layers


def test_gpt2_style_names_in_depth_order():
    names = [
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.1.mlp.c_fc.bias",
        "transformer.h.10.ln_1.weight",
        "transformer.ln_f.weight",
    ]
    got = assign_layers(names)
    assert got["transformer.wte.weight"].layer == "embedding"
    assert got["transformer.wpe.weight"].depth == 0
    assert got["transformer.h.0.attn.c_attn.weight"].layer == "block.0"
    # numeric, not lexicographic, order: block.10 after block.1
    assert got["transformer.h.10.ln_1.weight"].depth > got["transformer.h.1.mlp.c_fc.bias"].depth
    assert got["transformer.ln_f.weight"].layer == "head"
    assert got["transformer.ln_f.weight"].depth == max(v.depth for v in got.values())


def test_llama_style_names():
    names = [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.1.input_layernorm.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]
    got = assign_layers(names)
    assert [got[n].layer for n in names] == [
        "embedding",
        "block.0",
        "block.0",
        "block.1",
        "head",
        "head",
    ]
    assert [got[n].depth for n in names] == [0, 1, 1, 2, 3, 3]


def test_two_stacks_keep_their_prefix_and_unknown_names_go_before_the_head():
    names = [
        "shared.weight",
        "encoder.layer.0.w",
        "encoder.layer.1.w",
        "decoder.layers.0.w",
        "pooler.w",
        "lm_head.weight",
    ]
    got = assign_layers(names)
    assert got["encoder.layer.1.w"].layer == "encoder.layer.1"
    assert got["decoder.layers.0.w"].layer == "decoder.layers.0"
    assert got["encoder.layer.1.w"].depth < got["decoder.layers.0.w"].depth
    assert got["pooler.w"].layer == "other"
    assert got["shared.weight"].depth < got["pooler.w"].depth < got["lm_head.weight"].depth
