"""The static attention cache (preallocated buffers, a device-side length, attention over every slot with unused
ones masked out) against the growing one: the same logits step by step (left padding, growth of the buffers,
beam reorders, crop, row selection and repetition), the same generate tokens, and shapes that stay put between
growths (GraphedDecoder's own steadiness check)."""
import pytest
import torch

from conftest import rel_err
from wonderful_matrices.layers import Attention
from wonderful_matrices.layers.attention import static_state
from wonderful_matrices.models import CheemsCache, CheemsConfig, CheemsForCausalLM, GraphedDecoder, presets
from wonderful_matrices.models.cache import CAPACITY_QUANTUM
from wonderful_matrices.models.modeling import CACHE_NAME

TOL32 = 1e-6


def _model(name, **overrides):
    torch.manual_seed(0)
    return CheemsForCausalLM(presets.get(name, **overrides)).eval()


def _pair(model, ids, mask):
    """A growing and a static cache after the same prefill; their logits agree."""
    caches = CheemsCache(model.config, static_attention=False), CheemsCache(model.config, static_attention=True)
    with torch.no_grad():
        ref, out = (model(ids, attention_mask=mask, past_key_values=c).logits for c in caches)
    assert rel_err(out, ref) < TOL32
    return caches


def _step_both(model, caches, token):
    with torch.no_grad():
        ref, out = (model(token, past_key_values=c).logits for c in caches)
    assert rel_err(out, ref) < TOL32
    return out


@pytest.mark.parametrize("name", ["llama-tiny", "jamba-tiny"])
def test_static_cache_steps_give_the_growing_caches_logits_across_a_growth(name):
    model = _model(name)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, model.config.vocab_size, (3, 250), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :37] = 0  # left padding
    growing, static = _pair(model, ids, mask)
    attn = model.config.mixer_types.index("attn")
    assert static.attention_capacity == CAPACITY_QUANTUM and "capacity" not in growing.layer_state(attn)
    for _ in range(12):  # 250 + 12 tokens: the buffers grow from 256 to 512 slots on the way
        _step_both(model, (growing, static), torch.randint(1, model.config.vocab_size, (3, 1), generator=gen))
    assert static.attention_capacity == 2 * CAPACITY_QUANTUM
    assert static.layer_state(attn)["key"].shape[1] == 2 * CAPACITY_QUANTUM
    assert static.kv_length(attn) == growing.kv_length(attn) == 262
    assert torch.equal(static.real_tokens, growing.real_tokens)


def test_static_cache_follows_reorders_crops_and_row_changes():
    model = _model("llama-tiny")
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(1, model.config.vocab_size, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, :4] = 0
    caches = _pair(model, ids, mask)
    token = lambda b: torch.randint(1, model.config.vocab_size, (b, 1), generator=gen)  # noqa: E731
    for step in range(10):
        if step == 3:
            for c in caches:
                c.reorder_cache(torch.tensor([2, 2, 0]))  # beam search
        if step == 5:
            for c in caches:
                c.crop(-3)  # assisted decoding rejected three tokens
            assert caches[0].get_seq_length() == caches[1].get_seq_length() == 11
            assert caches[1].kv_length(0) == 11
        _step_both(model, caches, token(3))
    for c in caches:
        c.batch_select_indices(torch.tensor([0, 2]))
    _step_both(model, caches, token(2))
    for c in caches:
        c.batch_repeat_interleave(2)
    for _ in range(3):
        _step_both(model, caches, token(4))
    # a multi-token call with padding among the new tokens continues the static cache too
    more = torch.randint(1, model.config.vocab_size, (4, 3), generator=gen)
    with torch.no_grad():
        ref, out = (model(more, attention_mask=torch.tensor([[1] * 3] * 3 + [[0, 1, 1]]),
                          past_key_values=c).logits for c in caches)
    assert rel_err(out, ref) < TOL32


@pytest.mark.parametrize("name", ["llama-tiny", "jamba-tiny"])
@pytest.mark.parametrize("kw", [dict(do_sample=False), dict(do_sample=True, top_k=20), dict(num_beams=3)],
                         ids=["greedy", "sample", "beam"])
def test_generate_with_a_static_cache_gives_the_same_tokens(name, kw):
    static_model = _model(name, static_attention_cache=True)
    growing_model = _model(name, static_attention_cache=False)
    ids = torch.randint(1, static_model.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    kw = dict(kw, attention_mask=mask, max_new_tokens=9, pad_token_id=0)
    cache = CheemsCache(static_model.config)
    assert cache.static_attention
    with torch.no_grad():
        torch.manual_seed(4)
        static = static_model.generate(ids, **{CACHE_NAME: cache}, **kw)
        torch.manual_seed(4)
        growing = growing_model.generate(ids, **kw)
    assert torch.equal(static, growing)
    # generate reserved its max_length up front (11 + 9 tokens): the buffers never grew
    assert cache.attention_capacity == CAPACITY_QUANTUM


def test_generate_decides_the_cache_layout_by_the_graphed_path():
    # static buffers exactly where the graphed path runs (CUDA with graphed_decoding), unless the config says
    model = _model("llama-tiny")
    for config_value, expected in ((None, False), (True, True), (False, False)):
        model.config.static_attention_cache = config_value
        kwargs = {}
        model._prepare_cache_for_generation(model.generation_config, kwargs, None)
        assert kwargs[CACHE_NAME].static_attention is expected
    assert CheemsCache(presets.get("llama-tiny", graphed_decoding=True)).static_attention == torch.cuda.is_available()


def test_static_steps_are_steady_between_growths():
    model = _model("jamba-tiny", static_attention_cache=True)
    ids = torch.randint(1, model.config.vocab_size, (2, 250), generator=torch.Generator().manual_seed(5))
    cache = CheemsCache(model.config)
    with torch.no_grad():
        model(ids, past_key_values=cache)
    decoder = GraphedDecoder(model, cache, use_graph=False)
    shapes, changed = [decoder._shapes()], []
    for step in range(10):
        decoder.step(torch.tensor([[step + 1], [step + 2]]))
        shapes.append(decoder._shapes())
        changed.append(shapes[-1] != shapes[-2])
    assert changed == [False] * 6 + [True] + [False] * 3  # only the step writing key 257 reallocates
    fixed = decoder._snapshot()
    assert all(decoder._snapshot()[key] is t for key, t in fixed.items())
    with torch.no_grad():
        decoder._eager(torch.tensor([[1], [2]]))
    decoder._fold(fixed)  # an in-place step: every cache tensor keeps its address
    assert all(decoder._snapshot()[key] is t for key, t in fixed.items())


def test_attention_layer_static_state_and_weights():
    torch.manual_seed(0)
    layer = Attention(32, 4, 2, 8).double()
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    pos = torch.arange(7).expand(2, 7)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, :2] = False
    growing = {}
    ref = layer(x[:, :5], pos[:, :5], mask[:, :5], growing)
    static = static_state(growing["key"], growing["value"], growing["key_mask"], 9)
    assert static["key"].shape == (2, 9, 2, 8) and int(static["length"][0]) == 5
    w_ref = layer.attention_weights(x[:, 5:], pos[:, 5:] - 2, None, growing)
    w = layer.attention_weights(x[:, 5:], pos[:, 5:] - 2, None, static)
    assert w.shape == w_ref.shape and rel_err(w, w_ref) < 1e-12
    ref = layer(x[:, 5:], pos[:, 5:] - 2, None, growing)
    out = layer(x[:, 5:], pos[:, 5:] - 2, None, static)
    assert rel_err(out, ref) < 1e-12 and int(static["length"][0]) == 7
    assert not static["key_mask"][:, 7:].any() and torch.equal(static["key_mask"][:, :7], growing["key_mask"])
    with pytest.raises(ValueError, match="capacity"):
        static_state(growing["key"], growing["value"], growing["key_mask"], 3)
    with pytest.raises(ValueError, match="static_attention_cache"):
        CheemsConfig(static_attention_cache="yes")
    with pytest.raises(ValueError, match="static_attention"):
        CheemsCache(presets.get("llama-tiny"), static_attention=1)
    with pytest.raises(ValueError, match="tokens"):
        CheemsCache(presets.get("llama-tiny")).reserve(-1)


def test_gradients_flow_through_a_static_cache():
    # with autograd recording, the buffers are replaced rather than written: backward sees the values it saved
    torch.manual_seed(0)
    layer = Attention(16, 2, 1, 8).double()
    x = torch.randn(1, 6, 16, dtype=torch.float64, requires_grad=True)
    pos = torch.arange(6)[None]
    grads = []
    for state in ({}, {"capacity": 8}):
        x.grad = None
        (layer(x[:, :4], pos[:, :4], None, state).sum() + layer(x[:, 4:], pos[:, 4:], None, state).sum()).backward()
        grads.append(x.grad.clone())
    assert rel_err(grads[1], grads[0]) < 1e-12
