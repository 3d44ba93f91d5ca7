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


def _hf_names(model_cls: str, config_cls: str, **config: object) -> list[str]:
    """named_parameters() of a real transformers model built from a tiny config (no weights)."""
    import pytest

    transformers = pytest.importorskip("transformers")
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config))
    return [n for n, _ in model.named_parameters()]


def _layers_in_order(got: dict) -> list[str]:
    return [layer for _, layer in sorted({(v.depth, v.layer) for v in got.values()})]


def test_t5_blocks_stacks_and_final_norms():
    names = _hf_names(
        "T5ForConditionalGeneration",
        "T5Config",
        vocab_size=32,
        d_model=8,
        d_kv=4,
        d_ff=16,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        tie_word_embeddings=False,
    )
    got = assign_layers(names)
    # the sub-layers of a T5 block (attention, cross-attention, feed-forward) are one layer
    assert got["encoder.block.0.layer.0.SelfAttention.q.weight"].layer == "encoder.block.0"
    assert got["encoder.block.0.layer.1.DenseReluDense.wi.weight"].layer == "encoder.block.0"
    assert got["decoder.block.1.layer.2.layer_norm.weight"].layer == "decoder.block.1"
    assert _layers_in_order(got) == [
        "embedding",
        "encoder.block.0",
        "encoder.block.1",
        "encoder.final_norm",
        "decoder.block.0",
        "decoder.block.1",
        "decoder.final_norm",
        *(["head"] if "lm_head.weight" in names else []),  # tied to shared: not a parameter
    ]
    assert [n for n in names if got[n].layer == "head"] == [n for n in names if "lm_head" in n]


def test_mbart_final_norms_end_their_stacks():
    names = _hf_names(
        "MBartForConditionalGeneration",
        "MBartConfig",
        vocab_size=32,
        d_model=8,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        max_position_embeddings=16,
    )
    assert "model.encoder.layer_norm.weight" in names  # mBART's norm after the last block
    got = assign_layers(names)
    assert _layers_in_order(got) == [
        "embedding",
        "model.encoder.layers.0",
        "model.encoder.layers.1",
        "model.encoder.final_norm",
        "model.decoder.layers.0",
        "model.decoder.layers.1",
        "model.decoder.final_norm",
    ]
    assert got["model.encoder.layernorm_embedding.weight"].layer == "embedding"


def test_bert_masked_lm_head():
    names = _hf_names(
        "BertForMaskedLM",
        "BertConfig",
        vocab_size=32,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
    )
    got = assign_layers(names)
    assert got["bert.encoder.layer.1.output.dense.weight"].layer == "block.1"
    heads = [n for n in names if got[n].layer == "head"]
    assert heads and all(n.startswith("cls.predictions.") for n in heads)
    assert {n for n in names if n.startswith("cls.")} <= set(heads)
    assert _layers_in_order(got) == ["embedding", "block.0", "block.1", "head"]
