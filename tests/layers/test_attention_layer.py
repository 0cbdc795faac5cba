import math

import pytest
import torch

from conftest import rel_err
from wonderful_matrices.layers import Attention
from wonderful_matrices.layers.rotary import RotaryEmbedding, apply_rotary


def naive_attention(layer: Attention, x, position_ids, key_mask):
    """Loop oracle: per batch, head and query, softmax over visible real keys; no visible key -> zeros."""
    b, l, _ = x.shape
    hq, hkv, d = layer.num_heads, layer.num_kv_heads, layer.head_dim
    q = layer.q_proj(x).view(b, l, hq, d)
    k = layer.k_proj(x).view(b, l, hkv, d)
    v = layer.v_proj(x).view(b, l, hkv, d)
    cos, sin = RotaryEmbedding(d, layer.rotary.theta)(position_ids, x.dtype)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    rows = []
    for bi in range(b):
        heads = []
        for h in range(hq):
            g = h // (hq // hkv)
            outs = []
            for i in range(l):
                js = [j for j in range(i + 1) if key_mask[bi, j]]
                if not js:
                    outs.append(torch.zeros(d, dtype=x.dtype))
                    continue
                s = torch.stack([q[bi, i, h] @ k[bi, j, g] for j in js]) / math.sqrt(d)
                p = torch.softmax(s, 0)
                outs.append(sum(p[n] * v[bi, j, g] for n, j in enumerate(js)))
            heads.append(torch.stack(outs))
        rows.append(torch.stack(heads, 1))
    o = torch.stack(rows).reshape(b, l, hq * d)
    return layer.o_proj(o)


@pytest.mark.parametrize("hq,hkv,l", [(4, 2, 7), (2, 2, 1), (3, 1, 5)])
def test_attention_matches_loop_oracle_fwd_and_grad(hq, hkv, l):
    layer = Attention(24, hq, hkv, 8, rope_theta=500.0, attention_bias=True).double()
    x = torch.randn(2, l, 24, dtype=torch.float64, requires_grad=True)
    pos = torch.arange(l).expand(2, l)
    y = layer(x, pos, None, None)
    ref = naive_attention(layer, x, pos, torch.ones(2, l, dtype=torch.bool))
    assert rel_err(y, ref) < 1e-12
    g = torch.randn_like(y)
    gx, = torch.autograd.grad(y, x, g)
    gr, = torch.autograd.grad(ref, x, g)
    assert rel_err(gx, gr) < 1e-12


def test_attention_padding_mask_and_fully_masked_rows():
    layer = Attention(16, 2, 1, 8).double()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    y = layer(x, pos, mask, None)
    ref = naive_attention(layer, x, pos, mask.bool())
    assert not torch.isnan(y).any()
    assert rel_err(y, ref) < 1e-12
    # padded query rows attend to nothing: zeros before o_proj (which has no bias here)
    assert torch.allclose(y[0, :2], torch.zeros_like(y[0, :2]))
    # the real tokens of the padded row equal the unpadded computation
    y1 = layer(x[:1, 2:], torch.arange(4)[None], None, None)
    assert rel_err(y[0, 2:], y1[0]) < 1e-12


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_attention_cache_prefill_then_steps_equals_full(dtype, tol):
    layer = Attention(32, 4, 2, 8).to(dtype)
    x = torch.randn(2, 9, 32, dtype=dtype)
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1, 1], [1] * 9])
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    full = layer(x, pos, mask, None)
    state = {}
    parts = [layer(x[:, :4], pos[:, :4], mask[:, :4], state)]
    parts.append(layer(x[:, 4:6], pos[:, 4:6], mask[:, 4:6], state))
    for t in range(6, 9):
        parts.append(layer(x[:, t:t + 1], pos[:, t:t + 1], mask[:, t:t + 1], state))
    assert state["key"].shape == (2, 9, 2, 8) and state["key_mask"].shape == (2, 9)
    assert rel_err(torch.cat(parts, 1)[:, 1:], full[:, 1:]) < tol
    assert rel_err(torch.cat(parts, 1)[1], full[1]) < tol


def test_attention_steps_without_padding_skip_the_mask(monkeypatch):
    # no padded key: prefill, and one-token steps after it, use SDPA without a mask; a multi-token call after a
    # prefill still needs the bottom-right causal mask; once a call had padding every later call keeps the mask
    layer = Attention(32, 4, 2, 8).double()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    pos = torch.arange(9)[None].expand(2, 9)
    full = layer(x, pos, None, None)
    masked_calls = []
    real = layer._attend_masked
    monkeypatch.setattr(layer, "_attend_masked", lambda *a: masked_calls.append(a[0].shape[1]) or real(*a))
    state = {}
    parts = [layer(x[:, :4], pos[:, :4], None, state), layer(x[:, 4:5], pos[:, 4:5], None, state),
             layer(x[:, 5:7], pos[:, 5:7], None, state), layer(x[:, 7:8], pos[:, 7:8], None, state)]
    assert masked_calls == [2] and state["has_padding"] is False
    padded = torch.tensor([[True], [False]])
    parts.append(layer(x[:, 8:9], pos[:, 8:9], padded, state))
    assert masked_calls == [2, 1] and state["has_padding"] is True
    assert rel_err(torch.cat(parts, 1)[:, :8], full[:, :8]) < 1e-12 and rel_err(parts[-1][0], full[0, 8:]) < 1e-12


@pytest.mark.parametrize("kwargs,name", [
    (dict(hidden_size=16, num_heads=3, num_kv_heads=2, head_dim=8), "num_kv_heads"),
    (dict(hidden_size=16, num_heads=2, num_kv_heads=1, head_dim=7), "head_dim"),
    (dict(hidden_size=0, num_heads=2, num_kv_heads=1, head_dim=8), "hidden_size"),
])
def test_attention_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Attention(**kwargs)
