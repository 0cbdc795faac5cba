import pytest
import torch

from conftest import decode_through_beam_reorder, rel_err
from wonderful_matrices.layers import DynamicMaskAttention
from wonderful_matrices.models.convert import load_hf_doge_attention_state

# layers.rotary applies RoPE in float32 even to float64 inputs, so float64 layer runs agree to ~1e-8, not 1e-15;
# a wrong kept set changes outputs by O(1e-1).
TOL64 = 1e-6


def randomize(layer, scale=0.5):
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return layer


def sliding_window_reference(layer, q, k, v, w):
    """The output of ``layer`` (24 wide, 4 query heads of 6 over 2 KV heads) when each query attends exactly its w
    latest keys: causal softmax over ``(i - w, i]`` of its projections q (b, l, 4, 6), k, v (b, l, 2, 6)."""
    b, l = q.shape[:2]
    k, v = k.repeat_interleave(2, dim=2), v.repeat_interleave(2, dim=2)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / 6 ** 0.5
    i, j = torch.arange(l)[:, None], torch.arange(l)[None, :]
    scores = scores.masked_fill((j > i) | (j <= i - w), float("-inf"))
    return layer.o_proj(torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v).reshape(b, l, 24))


def full_and_cached(layer, x, pos, mask, splits):
    """One full forward and a cached run over chunks of the given lengths; returns both and the cache sizes."""
    full = layer(x, pos, mask)
    state, outs, sizes, start = {}, [], [], 0
    for n in splits:
        sl = slice(start, start + n)
        outs.append(layer(x[:, sl], pos[:, sl], None if mask is None else mask[:, sl], state))
        sizes.append(state["key"].shape[1])
        assert state["value"].shape[:3] == state["key"].shape[:3]
        assert state["bias"].shape == state["position"].shape == state["key"].shape[:3]
        start += n
    assert start == x.shape[1]
    return full, torch.cat(outs, 1), sizes


@pytest.mark.parametrize("w", [1, 3, 6])
@pytest.mark.parametrize("ties", [False, True])
def test_bounded_cache_decoding_equals_full_forward(w, ties):
    layer = randomize(DynamicMaskAttention(24, 4, 2, 6, keep_window=w)).double()
    if ties:  # every bias equal: sliding-window attention, ties decided by position through the cache
        with torch.no_grad():
            layer.dt_proj.weight.zero_()
    b, l = 2, 29
    x = torch.randn(b, l, 24, dtype=torch.float64)
    pos = torch.arange(l).expand(b, l)
    splits = [5, 1, 1, 4, 1, 2, 7] + [1] * 8
    full, cached, sizes = full_and_cached(layer, x, pos, None, splits)
    assert rel_err(cached, full) < TOL64
    assert max(sizes) <= w and sizes[-1] == w


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask_form", ["gate", "doge"])
def test_tied_biases_make_sliding_window_attention(dtype, mask_form):
    """Equal ``dt_proj`` outputs give one bias wherever they sit in the tensor (the CPU's float32 softplus rounded
    an element by its place, so ties went to the wrong keys): each query then keeps its w latest keys — sliding-
    window attention — in the full forward and in a cached run."""
    w = 5
    layer = randomize(DynamicMaskAttention(24, 4, 2, 6, keep_window=w, mask_form=mask_form)).to(dtype)
    with torch.no_grad():
        layer.dt_proj.weight.zero_()
        layer.dt_proj.bias.copy_(torch.tensor([0.3, -0.2]))  # softplus(0.3) rounded two ways in float32 on the CPU
    b, l = 2, 23
    x = torch.randn(b, l, 24, dtype=dtype)
    pos = torch.arange(l).expand(b, l)
    q, k, v, bias = layer._project(x, pos, None)
    assert all(bias[..., h].unique().numel() == 1 for h in range(2))
    expected = sliding_window_reference(layer, q, k, v, w)
    full, cached, _ = full_and_cached(layer, x, pos, None, [5, 1, 3] + [1] * 14)
    tol = TOL64 if dtype == torch.float64 else 1e-5
    assert rel_err(full, expected) < tol and rel_err(cached, expected) < tol


@pytest.mark.parametrize("w", [1, 4])
def test_mask_form_none_is_sliding_window_attention(w):
    """No mask parameters; each query attends exactly its w latest keys (oracle: causal softmax over (i - w, i] in
    float64); a cached run over chunks equals the full forward."""
    layer = randomize(DynamicMaskAttention(24, 4, 2, 6, keep_window=w, mask_form="none")).double()
    assert not any(n.startswith(("dt_proj", "A")) for n, _ in layer.named_parameters())
    b, l = 2, 17
    x = torch.randn(b, l, 24, dtype=torch.float64)
    pos = torch.arange(l).expand(b, l)
    q, k, v, bias = layer._project(x, pos, None)
    assert torch.equal(bias, torch.zeros_like(bias))
    expected = sliding_window_reference(layer, q, k, v, w)
    full, cached, sizes = full_and_cached(layer, x, pos, None, [5, 1, 3] + [1] * 8)
    assert rel_err(full, expected) < 1e-12
    assert rel_err(cached, full) < TOL64 and max(sizes) <= w


def test_cache_decoding_with_left_padding_and_gqa():
    layer = randomize(DynamicMaskAttention(16, 4, 1, 4, keep_window=4)).double()
    b, l = 3, 21
    x = torch.randn(b, l, 16, dtype=torch.float64)
    mask = torch.ones(b, l, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :6] = 0
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    full, cached, sizes = full_and_cached(layer, x, pos, mask, [8] + [1] * 13)
    real = mask.bool()
    assert rel_err(cached[real], full[real]) < TOL64
    assert max(sizes) <= 4


def test_no_window_cache_grows_and_matches():
    layer = randomize(DynamicMaskAttention(16, 2, 2, 8)).double()
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    pos = torch.arange(12).expand(2, 12)
    full, cached, sizes = full_and_cached(layer, x, pos, None, [5, 1, 3, 1, 2])
    assert rel_err(cached, full) < TOL64
    assert sizes == [5, 6, 9, 10, 12]


@pytest.mark.parametrize("w", [None, 3])
def test_padding_never_influences_real_tokens(w):
    layer = randomize(DynamicMaskAttention(16, 2, 1, 8, keep_window=w))
    x = torch.randn(2, 10, 16)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, :4] = 0
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    out = layer(x, pos, mask)
    x2 = x.clone()
    x2[0, :4] = torch.randn(4, 16) * 100
    out2 = layer(x2, pos, mask)
    assert torch.equal(out[0, 4:], out2[0, 4:]) and torch.equal(out[1], out2[1])
    # the real tokens of row 0 equal the same tokens run without padding
    alone = layer(x[:1, 4:], torch.arange(6)[None], None)
    assert rel_err(out[0, 4:], alone[0]) < 1e-5


def test_no_output_depends_on_a_future_token():
    layer = randomize(DynamicMaskAttention(16, 2, 2, 8, keep_window=2))
    x = torch.randn(1, 12, 16)
    pos = torch.arange(12)[None]
    out = layer(x, pos)
    x2 = x.clone()
    x2[:, 7:] = torch.randn(1, 5, 16) * 10
    assert torch.equal(layer(x2, pos)[:, :7], out[:, :7])


def test_gate_bias_is_bounded_and_large_dt_does_not_overflow():
    layer = randomize(DynamicMaskAttention(16, 2, 2, 8, keep_window=4))
    with torch.no_grad():
        layer.dt_proj.bias.fill_(1e6)
        layer.A_log.fill_(5.0)
    x = torch.randn(2, 9, 16)
    bias = layer.key_bias(layer.v_proj(x))
    assert torch.isfinite(bias).all() and (bias <= 0).all()
    out = layer(x, torch.arange(9).expand(2, 9))
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_gradients_reach_the_mask_parameters():
    layer = randomize(DynamicMaskAttention(16, 4, 2, 4, keep_window=3))
    x = torch.randn(2, 11, 16)
    (layer(x, torch.arange(11).expand(2, 11)) ** 2).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bf16_forward_close_to_float64():
    layer = randomize(DynamicMaskAttention(32, 4, 2, 8, keep_window=5), 0.2)
    x = torch.randn(2, 17, 32)
    pos = torch.arange(17).expand(2, 17)
    ref = layer.double()(x.double(), pos)
    out = layer.bfloat16()(x.bfloat16(), pos)
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) < 3e-2


@pytest.mark.parametrize("seq,window", [(11, 16), (11, 11), (13, 4)])
def test_doge_form_matches_hf_doge_attention(seq, window):
    from transformers import DogeConfig
    from transformers.models.doge.modeling_doge import DogeAttention, DogeRotaryEmbedding

    cfg = DogeConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, keep_window_size=window,
                     attention_bias=True, rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                     vocab_size=64, num_hidden_layers=1, intermediate_size=64)
    cfg._attn_implementation = "eager"
    hf = randomize(DogeAttention(cfg, layer_idx=0).eval(), 0.3)
    ours = DynamicMaskAttention(32, 4, 2, 8, keep_window=window, rope_theta=500.0, mask_form="doge",
                                attention_bias=True, qk_norm=True, rms_norm_eps=cfg.rms_norm_eps)
    ours.load_state_dict(load_hf_doge_attention_state(hf.state_dict()), strict=True)
    x = torch.randn(2, seq, 32)
    pos = torch.arange(seq).expand(2, seq)
    cos_sin = DogeRotaryEmbedding(cfg)(x, pos)
    causal = torch.full((seq, seq), torch.finfo(torch.float32).min).triu(1)[None, None].expand(2, 1, seq, seq)
    with torch.no_grad():
        ref, _ = hf(x, position_embeddings=cos_sin, attention_mask=causal)
        out = ours(x, pos)
    assert rel_err(out, ref) < 1e-4


def test_load_hf_doge_state_adds_zero_dt_bias():
    state = {"dt_proj.weight": torch.randn(2, 8)}
    assert torch.equal(load_hf_doge_attention_state(state)["dt_proj.bias"], torch.zeros(2))


BAD = [
    (dict(num_heads=3), "num_heads"),
    (dict(head_dim=5), "head_dim"),
    (dict(keep_window=0), "keep_window"),
    (dict(mask_form="exp"), "mask_form"),
    (dict(hidden_size=0), "hidden_size"),
]


@pytest.mark.parametrize("override,argument", BAD, ids=[a for _, a in BAD])
def test_bad_constructor_arguments(override, argument):
    args = dict(hidden_size=16, num_heads=4, num_kv_heads=2, head_dim=4)
    args.update(override)
    with pytest.raises(ValueError, match=argument):
        DynamicMaskAttention(**args)


def test_bad_forward_arguments():
    layer = DynamicMaskAttention(16, 4, 2, 4)
    x = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match="hidden_states"):
        layer(torch.randn(2, 5, 8), torch.arange(5).expand(2, 5))
    with pytest.raises(ValueError, match="position_ids"):
        layer(x, torch.arange(4).expand(2, 4))
    with pytest.raises(ValueError, match="attention_mask"):
        layer(x, torch.arange(5).expand(2, 5), torch.ones(2, 4))


def test_decoding_under_no_grad_matches_too():
    """Generation runs without a graph, where the full-cache step updates the cache in place."""
    layer = randomize(DynamicMaskAttention(16, 2, 1, 8, keep_window=3)).double()
    x = torch.randn(2, 15, 16, dtype=torch.float64)
    pos = torch.arange(15).expand(2, 15)
    with torch.no_grad():
        for splits in ([4] + [1] * 11, [3] + [1] * 12):  # a prefill of exactly w keys, then full-cache steps
            full, cached, sizes = full_and_cached(layer, x, pos, None, splits)
            assert rel_err(cached, full) < TOL64 and max(sizes) == 3


@pytest.mark.parametrize("w,prefill", [(None, 5), (None, 254), (4, 2), (4, 9), (6, 6)])
def test_no_grad_decoding_in_place_matches_full_forward(w, prefill):
    """Generation path: preallocated buffers updated in place (widened once to w slots with a window; grown
    geometrically past 256 slots without); prefill + steps == one full forward, and the window's steady state
    writes into the same buffer every step (no reallocation)."""
    layer = randomize(DynamicMaskAttention(16, 4, 2, 4, keep_window=w)).double()
    b, steps = 2, 7
    l = prefill + steps
    x = torch.randn(b, l, 16, dtype=torch.float64)
    mask = torch.ones(b, l, dtype=torch.long)
    mask[1, :2] = 0  # left padding in row 1
    mask[0, prefill + 3] = 0  # a padded token among the steps
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    with torch.no_grad():
        full, cached, sizes = full_and_cached(layer, x, pos, mask, [prefill] + [1] * steps)
        real = mask.bool()
        assert rel_err(cached[real], full[real]) < TOL64
        if w is None:
            assert sizes == list(range(prefill, l + 1))[: len(sizes)]
        else:
            assert sizes[1:] == [w] * steps
            state = {}
            layer(x[:, :prefill], pos[:, :prefill], None, state)
            layer(x[:, prefill:prefill + 1], pos[:, prefill:prefill + 1], None, state)
            ptr = state["key"].data_ptr()
            layer(x[:, prefill + 1:prefill + 2], pos[:, prefill + 1:prefill + 2], None, state)
            assert state["key"].data_ptr() == ptr and state["key"].shape[1] == w


@pytest.mark.parametrize("w", [None, 3])
def test_no_grad_decoding_survives_beam_reorder(w):
    """index_select on the cache (beam search) makes plain copies: the next step reallocates buffers and stays exact."""
    layer = randomize(DynamicMaskAttention(16, 2, 1, 8, keep_window=w)).double()
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    outs, reference = decode_through_beam_reorder(layer, x, torch.arange(12).expand(2, 12))
    assert rel_err(outs, reference) < TOL64


@pytest.mark.parametrize("w", [None, 8])
def test_decoding_never_writes_into_the_callers_tensors(w):
    """A prompt's position ids sliced from a longer tensor of the caller's (the usual way: positions of the whole
    sequence computed once): with one KV head the cache keeps a view of them. The steps must neither write past the
    slice (into the caller's tensor) nor read it: prefill + steps == one full forward, the caller's tensor intact.
    (The step took any tensor whose storage ran past its end for its own buffer.)"""
    layer = randomize(DynamicMaskAttention(16, 2, 1, 8, keep_window=w)).double()
    for length in (9, 20):  # the caller's tensor: w + 1 positions (read as a buffer), or longer (a crash)
        x = torch.randn(1, length, 16, dtype=torch.float64)
        positions = torch.arange(length)[None]
        with torch.no_grad():
            full = layer(x, positions)
            state = {}
            outs = [layer(x[:, :5], positions[:, :5], None, state)]
            outs += [layer(x[:, t:t + 1], torch.tensor([[t]]), None, state) for t in range(5, length)]
        assert torch.equal(positions, torch.arange(length)[None])
        assert rel_err(torch.cat(outs, 1), full) < TOL64
