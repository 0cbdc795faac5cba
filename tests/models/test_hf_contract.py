"""What HF users rely on beyond the forward pass: loading configs/partial checkpoints, assisted decoding, the
Trainer, ``shift_labels``, ``torch.export``, ``output_attentions``/``output_hidden_states``/``return_dict``."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, PretrainedConfig

import wonderful_matrices as wm
from conftest import rel_err
from wonderful_matrices.models import CheemsConfig

TINY = [n for n in wm.presets.names() if n.endswith("-tiny")]
# the parameters a layer initialises itself (not Linear/Embedding/norm weights)
OWN_INIT = ("A_log", "dt_bias", ".D", "conv1d", "mixer.norm", "keys", "_embed", "gate_up_proj", "ffn.down_proj",
            "residual")


def make(name, **overrides):
    torch.manual_seed(0)
    return wm.CheemsForCausalLM(wm.presets.get(name, **overrides)).eval()


def tokens(model, b, l, seed=1):
    return torch.randint(0, model.config.vocab_size, (b, l), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", TINY)
def test_saved_config_loads_as_a_plain_pretrained_config(name, tmp_path):
    # transformers validates its own `layer_types` (attention kinds) whenever it loads a config, e.g. on resume
    cfg = wm.presets.get(name)
    cfg.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "layer_types" not in saved and saved["mixer_types"] == cfg.mixer_types
    PretrainedConfig.from_pretrained(tmp_path)
    # a config.json written before the rename still loads
    saved["layer_types"] = saved.pop("mixer_types")
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert CheemsConfig.from_pretrained(tmp_path).mixer_types == cfg.mixer_types


def test_layer_types_alias():
    cfg = CheemsConfig(num_hidden_layers=2, layer_types=["attn", "ssd"], ffn_types=["mlp", "mlp"])
    assert cfg.mixer_types == cfg.layer_types == ["attn", "ssd"]
    assert wm.presets.get("llama-tiny", layer_types=["dma"] * 4).mixer_types == ["dma"] * 4
    with pytest.raises(ValueError, match="layer_types"):
        CheemsConfig(num_hidden_layers=1, layer_types=["attn"], mixer_types=["ssd"])


@pytest.mark.parametrize("name", TINY)
def test_missing_keys_are_initialised_like_the_layers_do(name, tmp_path):
    model = make(name)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    dropped = [k for k in state if any(part in k for part in OWN_INIT)] + ["model.layers.0.mixer_norm.weight"]
    kept = {k: v for k, v in state.items() if k not in dropped}
    save_file(kept, tmp_path / "model.safetensors", metadata={"format": "pt"})
    for _ in range(3):  # uninitialised memory is often harmless by luck: load a few times
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        params = dict(loaded.named_parameters())
        for key in kept:
            if key in params:
                assert torch.equal(params[key], kept[key]), key
        for key in dropped:
            p = params[key]
            assert torch.isfinite(p).all(), key
            if key.endswith("A_log") and ".ffn" not in key:
                if "dma" in loaded.config.mixer_types[int(key.split(".")[2])]:
                    assert torch.equal(p, torch.zeros_like(p)), key
                else:  # SSD/Mamba2: A = -exp(A_log) uniform in [-16, -1]
                    assert ((p >= 0) & (p <= torch.log(torch.tensor(16.0)) + 1e-6)).all(), key
            if key.endswith("dt_bias"):  # softplus(dt_bias) in [dt_min, dt_max] = [1e-3, 0.1]
                dt = torch.nn.functional.softplus(p)
                assert ((dt >= 1e-3 - 1e-7) & (dt <= 0.1 + 1e-7)).all(), key
            if key.endswith((".D", "norm.weight", "residual")):
                assert torch.equal(p, torch.ones_like(p)), key
            if key.endswith(("keys", "_embed.weight", "gate_up_proj", "down_proj")) and p.numel() > 100:
                assert 0.02 < p.std() < 1.0, key  # N(0, 1/fan) of the layer, not HF's N(0, 0.02)
        x = tokens(loaded, 2, 9)
        with torch.no_grad():
            assert torch.isfinite(loaded(x).logits).all()


@pytest.mark.parametrize("dropped", [("up_embed",), ("down_embed", "up_embed"), ("keys",)])
def test_a_missing_expert_table_is_initialised_beside_loaded_sub_keys(dropped, tmp_path):
    """HF initialises only the modules a checkpoint left incomplete: an expert table missing beside the CDMoE's
    loaded sub-keys is a module of its own and gets its N(0, 1/d) rows, not uninitialised memory."""
    model = make("cheems-tiny")
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    gone = [k for k in state if ".ffn." in k and k.rsplit(".", 2)[-2 if k.endswith(".weight") else -1] in dropped]
    assert gone
    save_file({k: v for k, v in state.items() if k not in gone}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    for _ in range(3):  # uninitialised memory is often harmless by luck: load a few times
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        params = dict(loaded.named_parameters())
        for key in gone:
            p = params[key]
            fan = p.shape[-1] if key.endswith("keys") else loaded.config.hidden_size
            assert torch.isfinite(p).all() and 0.7 < p.std() * fan ** 0.5 < 1.3, key
        with torch.no_grad():
            assert torch.isfinite(loaded(tokens(loaded, 2, 9)).logits).all()


@pytest.mark.parametrize("name", TINY)
def test_assisted_and_prompt_lookup_decoding(name):
    model = make(name)
    x = torch.tensor([[5, 6, 7, 5, 6, 7, 5, 6]])
    with torch.no_grad():
        greedy = model.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=0)
        draft = make(name, num_hidden_layers=2, mixer_types=model.config.mixer_types[:2],
                     ffn_types=model.config.ffn_types[:2])
        torch.manual_seed(1)
        draft.apply(lambda m: torch.nn.init.normal_(m.weight, std=0.5) if isinstance(m, torch.nn.Linear) else None)
        if wm.models.CheemsCache.can_roll_back(model.config.mixer_types):
            # drafts get rejected (a different random model), and the result is still greedy decoding's
            assisted = model.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=0, assistant_model=draft)
            lookup = model.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=0, prompt_lookup_num_tokens=3)
            assert torch.equal(assisted, greedy) and torch.equal(lookup, greedy)
        else:
            for kwargs in (dict(assistant_model=draft), dict(prompt_lookup_num_tokens=3)):
                with pytest.raises(ValueError, match="assisted"):
                    model.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=0, **kwargs)


def test_crop_rolls_an_attention_cache_back():
    model = make("llama-tiny")
    x = tokens(model, 2, 10)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0
    with torch.no_grad():
        cache = wm.models.CheemsCache(model.config)
        model(x[:, :7], attention_mask=mask[:, :7], past_key_values=cache, use_cache=True)
        model(x[:, 7:9], attention_mask=mask[:, :9], past_key_values=cache, use_cache=True)
        cache.crop(-2)
        assert cache.get_seq_length() == 7 and cache.kv_length(0) == 7
        stepped = model(x[:, 7:], attention_mask=mask, past_key_values=cache, use_cache=True).logits
        full = model(x, attention_mask=mask).logits[:, 7:]
    assert rel_err(stepped[1:], full[1:]) < 1e-5 and rel_err(stepped[:1], full[:1]) < 1e-5
    with pytest.raises(ValueError, match="tokens_to_remove"):
        wm.models.CheemsCache(make("cheems-tiny").config).crop(-1)


@pytest.mark.parametrize("name", ["cheems-tiny", "jamba-tiny"])
def test_loss_uses_shift_labels_as_given(name):
    model = make(name).train()
    x = tokens(model, 2, 12)
    shift = tokens(model, 2, 12, seed=3)
    shift[0, :5] = -100
    out = model(x, shift_labels=shift, skip_logits=False)
    ce = torch.nn.functional.cross_entropy(out.logits.reshape(-1, model.config.vocab_size), shift.reshape(-1),
                                           ignore_index=-100)
    aux = 0.0 if out.aux_loss is None else out.aux_loss
    assert rel_err(out.loss, ce + aux) < 1e-6
    # with both, shift_labels win (labels are what a sequence-parallel rank cannot shift itself)
    assert rel_err(model(x, labels=x, shift_labels=shift).loss, out.loss) < 1e-6
    labels = x.clone()
    assert rel_err(model(x, labels=labels).loss,
                   model(x, shift_labels=torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)).loss) < 1e-6
    with pytest.raises(ValueError, match="shift_labels"):
        model(x, shift_labels=shift[:, :5])


@pytest.mark.parametrize("name", ["llama-tiny", "cheems-tiny"])
def test_torch_export_of_a_padded_forward(name):
    model = make(name)
    x = tokens(model, 2, 16)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, :4] = 0

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    exported = torch.export.export(Logits(), (x, mask))
    with torch.no_grad():
        want = model(x, attention_mask=mask, use_cache=False).logits
        got = exported.module()(x, mask)
    assert rel_err(got[0, 4:], want[0, 4:]) < 1e-5 and rel_err(got[1], want[1]) < 1e-5


@pytest.mark.parametrize("name", TINY)
def test_output_attentions_hidden_states_and_tuples(name):
    model = make(name)
    cfg = model.config
    x = tokens(model, 2, 11)
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, :4] = 0
    with torch.no_grad():
        out = model(x, attention_mask=mask, output_attentions=True)
        assert len(out.attentions) == cfg.num_hidden_layers
        for kind, weights in zip(cfg.mixer_types, out.attentions):
            if kind in ("ssd", "mamba2"):
                assert weights is None
                continue
            assert weights.shape == (2, cfg.num_attention_heads, 11, 11)
            assert torch.allclose(weights[0].sum(-1), torch.ones(cfg.num_attention_heads, 11))
            assert torch.equal(weights[1, :, :4], torch.zeros_like(weights[1, :, :4]))  # padded queries
            assert torch.equal(weights[1, :, :, :4], torch.zeros_like(weights[1, :, :, :4]))  # padded keys
            assert torch.equal(weights.triu(1), torch.zeros_like(weights))  # causal
            if kind == "dma":
                assert ((weights > 0).sum(-1) <= cfg.keep_window).all()
        # the config decides when the keyword is not given
        model.config.output_hidden_states = True
        hidden = model(x).hidden_states
        assert len(hidden) == cfg.num_hidden_layers + 1 and hidden[0].shape == (2, 11, cfg.hidden_size)
        model.config.output_hidden_states = False
        assert model(x).hidden_states is None
        as_tuple = model(x, labels=x, return_dict=False)
        assert isinstance(as_tuple, tuple)
        assert torch.equal(as_tuple[0], model(x, labels=x).loss)
        assert isinstance(model.model(x, return_dict=False), tuple)


@pytest.mark.parametrize("name", ["doge-tiny", "llama-tiny"])
def test_attention_weights_give_the_layer_output(name):
    # weights @ values is the mixer's output, also with a cache (keys: the cached ones in position order, then new)
    model = make(name)
    layer = model.model.layers[0].mixer.double()
    h = torch.randn(2, 13, model.config.hidden_size, dtype=torch.float64)
    pos = torch.arange(13)[None].expand(2, 13)
    mask = torch.ones(2, 13, dtype=torch.bool)
    mask[0, :3] = False
    state = {}
    layer(h[:, :9], pos[:, :9], mask[:, :9], state)
    cached_v = state["value"]
    if "position" in state:  # DMA keeps the selectable keys, not necessarily in position order
        order = state["position"].argsort(dim=1, stable=True)
        cached_v = cached_v.gather(1, order[..., None].expand_as(cached_v))
    weights = layer.attention_weights(h[:, 9:], pos[:, 9:], mask[:, 9:], state)
    out = layer(h[:, 9:], pos[:, 9:], mask[:, 9:], state)
    new_v = layer.v_proj(h[:, 9:]).view(2, 4, layer.num_kv_heads, layer.head_dim)
    v = torch.cat([cached_v, new_v], dim=1)
    assert weights.shape == (2, layer.num_heads, 4, v.shape[1])
    v = v.repeat_interleave(layer.num_heads // layer.num_kv_heads, dim=2).transpose(1, 2)  # (b, hq, keys, d)
    want = layer.o_proj((weights @ v).transpose(1, 2).reshape(2, 4, -1))
    assert rel_err(out, want) < 1e-10


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_attn_implementation_is_accepted_at_load(implementation, tmp_path):
    model = make("cheems-tiny")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=implementation).eval()
    x = tokens(model, 1, 7)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


@pytest.mark.parametrize("layers", [2, 6])
def test_from_pretrained_overrides_are_checked_like_the_config(layers, tmp_path):
    # HF sets from_pretrained's config keywords after the config was checked: a layer count that disagrees with
    # mixer_types built a model without its DMA layer (2) or failed with an IndexError deep in the blocks (6)
    wm.CheemsForCausalLM(wm.presets.get("cheems-tiny")).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=rf"mixer_types=.* is not allowed: a list of num_hidden_layers={layers}"):
        AutoModelForCausalLM.from_pretrained(tmp_path, num_hidden_layers=layers)


def test_generate_refuses_a_pad_token_outside_the_vocabulary():
    """generate feeds pad_token_id back for finished rows without checking it (its steps skip the id check)."""
    model = make("llama-tiny")
    x = tokens(model, 1, 5)
    for pad in (model.config.vocab_size, -1):
        with pytest.raises(ValueError, match="pad_token_id"):
            model.generate(x, max_new_tokens=2, pad_token_id=pad)


def test_a_cache_of_other_rows_is_refused():
    model = make("cheems-tiny")
    cache = wm.models.CheemsCache(model.config)
    with torch.no_grad():
        model(tokens(model, 2, 5), past_key_values=cache, use_cache=True)
        with pytest.raises(ValueError, match="past_key_values"):
            model(tokens(model, 3, 1), past_key_values=cache, use_cache=True)
