"""Config validation, presets, Auto registration and argument errors of the Cheems model."""
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import wonderful_matrices as wm
from wonderful_matrices.models import CheemsCache, CheemsConfig


def test_presets_names_and_bad_name():
    names = wm.presets.names()
    assert "llama-tiny" in names and len(names) == len(set(names))
    with pytest.raises(ValueError, match="name='nope-tiny'.*llama-tiny"):
        wm.presets.get("nope-tiny")


def test_preset_overrides_must_be_config_fields():
    with pytest.raises(ValueError, match="hiden_size=32 .*did you mean 'hidden_size'"):
        wm.presets.get("cheems-tiny", hiden_size=32)
    assert wm.presets.get("cheems-tiny", hidden_size=32, output_hidden_states=True).hidden_size == 32


def test_hybrid_ratio_sets_the_hybrids_layout():
    base = wm.presets.get("cheems-base")
    assert base.layer_types == ["ssd"] * 7 + ["dma"] + ["ssd"] * 3 + ["dma"]
    three = wm.presets.get("cheems-base", hybrid_ratio=3)
    assert three.layer_types == (["ssd"] * 3 + ["dma"]) * 3 and three.ffn_types == base.ffn_types
    assert wm.presets.get("cheems-base", hybrid_ratio=7).layer_types == base.layer_types
    assert wm.presets.get("jamba-small", hybrid_ratio=1).layer_types == ["mamba2", "attn"] * 4
    for name, ratio in (("llama-tiny", 3), ("cheems-tiny", 0), ("cheems-tiny", 2.0), ("jamba-tiny", True)):
        with pytest.raises(ValueError, match=f"hybrid_ratio={ratio!r} is not allowed: an integer >= 1, for the "
                                             "hybrid families"):
            wm.presets.get(name, hybrid_ratio=ratio)


def test_default_layer_pattern_is_cheems():
    cfg = CheemsConfig(num_hidden_layers=12, hidden_size=64, num_attention_heads=4)
    assert cfg.layer_types == ["ssd"] * 7 + ["dma"] + ["ssd"] * 3 + ["dma"]
    assert cfg.ffn_types == ["cdmoe"] * 12
    assert CheemsConfig(num_hidden_layers=3).layer_types == ["ssd", "ssd", "dma"]


@pytest.mark.parametrize("kwargs,name", [
    (dict(num_hidden_layers=3, layer_types=["attn", "attn"]), "layer_types"),
    (dict(num_hidden_layers=2, layer_types=["attn", "rnn"]), "layer_types"),
    (dict(num_hidden_layers=2, ffn_types=["mlp"]), "ffn_types"),
    (dict(num_hidden_layers=1, ffn_types=["dense"]), "ffn_types"),
    (dict(layer_types=["attn"], num_hidden_layers=1, num_attention_heads=6, num_key_value_heads=4),
     "num_key_value_heads"),
    (dict(layer_types=["attn"], num_hidden_layers=1, head_dim=7), "head_dim"),
    (dict(cdmoe_num_experts=16348), "cdmoe_num_experts"),
    (dict(cdmoe_top_k=200, cdmoe_num_experts=1024), "cdmoe_top_k"),
    (dict(ssd_chunk_size=48), "ssd_chunk_size"),
    (dict(ssd_num_heads=6, ssd_num_groups=4), "ssd_num_groups"),
    (dict(keep_window=0), "keep_window"),
    (dict(dma_mask_form="exp"), "dma_mask_form"),
    (dict(num_hidden_layers=1, layer_types=["mamba2"], ffn_types=["none"], hidden_size=96, mamba2_head_dim=80),
     "mamba2_head_dim"),
    (dict(num_hidden_layers=1, layer_types=["attn"], ffn_types=["moe"], moe_top_k=5, moe_num_experts=4), "moe_top_k"),
    (dict(num_hidden_layers=0), "num_hidden_layers"),
    (dict(vocab_size=16, pad_token_id=16), "pad_token_id"),
    (dict(vocab_size=16, eos_token_id=16), "eos_token_id"),
    (dict(vocab_size=16, eos_token_id=[3, -1]), "eos_token_id"),
    (dict(hidden_size=True), "hidden_size=True.*an integer"),
    (dict(hidden_size="64"), "hidden_size='64'.*an integer"),
    (dict(keep_window=8.0), "keep_window"),
    (dict(rms_norm_eps=float("nan")), "rms_norm_eps"),
    (dict(ssd_use_rope="yes"), "ssd_use_rope"),
    (dict(layer_types="ssd"), "layer_types"),
    (dict(cdmoe_backend="gemm"), "cdmoe_backend"),
    (dict(dma_decode_backend="dense"), "dma_decode_backend"),  # "dense" is an expert-mixture backend only
])
def test_config_validation_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CheemsConfig(**kwargs)


def test_config_accepts_every_expert_mixture_backend():
    for backend in ("auto", "torch", "dense", "triton"):
        assert CheemsConfig(cdmoe_backend=backend).cdmoe_backend == backend


def test_auto_classes_are_registered():
    cfg = wm.presets.get("llama-tiny")
    assert isinstance(AutoConfig.for_model("cheems"), CheemsConfig)
    assert type(AutoModel.from_config(cfg)) is wm.CheemsModel
    assert type(AutoModelForCausalLM.from_config(cfg)) is wm.CheemsForCausalLM


def test_tied_embeddings_by_default():
    model = wm.CheemsForCausalLM(wm.presets.get("llama-tiny"))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    untied = wm.CheemsForCausalLM(wm.presets.get("llama-tiny", tie_word_embeddings=False))
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight


def test_bad_inputs_raise_value_errors():
    model = wm.CheemsForCausalLM(wm.presets.get("llama-tiny")).eval()
    v = model.config.vocab_size
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.tensor([[1, v]]))
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 5))
    from transformers import DynamicCache
    with pytest.raises(ValueError, match="past_key_values"):
        model(torch.tensor([[1, 2]]), past_key_values=DynamicCache())
    with pytest.raises(ValueError, match="input_ids.dtype=torch.float32"):
        model(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"input_ids.shape=\(2, 0\)"):
        model(torch.zeros(2, 0, dtype=torch.long))
    ids = torch.tensor([[1, 2, 3]])
    for mode in ("eval", "train"):  # the plain loss and the fused one
        getattr(model, mode)()
        for bad in (v + 5, -5):
            with pytest.raises(ValueError, match=rf"labels=\[{bad}, ...\] is not allowed"):
                model(ids, labels=torch.tensor([[1, bad, 3]]))
        assert model(ids, labels=torch.tensor([[1, -100, 3]])).loss.isfinite()


def test_cache_reorder_and_kv_length():
    model = wm.CheemsForCausalLM(wm.presets.get("llama-tiny")).eval()
    cache = CheemsCache(model.config)
    x = torch.randint(0, 512, (3, 5))
    with torch.no_grad():
        model(x, past_key_values=cache, use_cache=True)
    assert cache.kv_length(0) == 5 and cache.get_seq_length() == 5 and cache.batch_size == 3
    key0 = cache.layer_state(0)["key"].clone()
    cache.reorder_cache(torch.tensor([2, 2, 0]))
    assert torch.equal(cache.layer_state(0)["key"], key0[[2, 2, 0]])
    with pytest.raises(ValueError, match="layer_idx"):
        cache.kv_length(99)
    with pytest.raises(ValueError, match="tokens_to_remove"):
        cache.crop(2)  # transformers' convention: a count <= 0 of tokens to remove
    cache.crop(-2)
    assert cache.kv_length(0) == 3 and cache.get_seq_length() == 3
    assert cache.nbytes() > 0


def test_torch_compile_traces_whole_graphs():
    # torch.compile sees the whole training forward of an attention model: the rotary memo, the value checks and
    # trusted_values() step aside while Dynamo traces (each once broke the graph)
    import torch._dynamo

    model = wm.CheemsForCausalLM(wm.presets.get("llama-tiny")).train()
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(lambda x: model(input_ids=x, labels=x).loss)(ids)
        assert explained.graph_break_count == 0, explained.break_reasons

        eager_only = torch.compiler.disable(lambda x: x + 1)

        def trusted_block(x):  # a graph break inside the block (as the SSD scans have) costs that break alone;
            y = 3 * x          # with a generator-based context manager Dynamo gave up on the whole frame
            with wm.ops.common.trusted_values():
                z = 2 * eager_only(y)
            return z.sin()
        explained = torch._dynamo.explain(trusted_block)(ids.float())
        assert (explained.graph_count, explained.graph_break_count) == (2, 1)
        layer = wm.layers.DynamicMaskAttention(32, 2, 1, 16, keep_window=8)
        x, pos = torch.randn(2, 16, 32), torch.arange(16)[None].expand(2, 16)
        assert torch._dynamo.explain(lambda: layer(x, pos).sum())().graph_break_count == 0
    finally:
        torch._dynamo.reset()
