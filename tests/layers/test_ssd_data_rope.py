"""SSDMixer with data-dependent rotary (``rope="data"``): against a per-token loop, its special cases, caching,
packed documents, gradients, and the ``ssd_rope`` config field."""
import math

import pytest
import torch
import torch.nn.functional as F

import wonderful_matrices as wm
from conftest import rel_err
from wonderful_matrices.layers import SSDMixer
from wonderful_matrices.models import CheemsCache, CheemsConfig

D_MODEL, HEADS, HEAD_DIM, STATE, GROUPS = 24, 4, 6, 8, 2


def make_mixer(dtype=torch.float64, **kw):
    args = dict(hidden_size=D_MODEL, num_heads=HEADS, head_dim=HEAD_DIM, state_size=STATE, num_groups=GROUPS,
                chunk_size=4, rope="data")
    args.update(kw)
    m = SSDMixer(**args).to(dtype)
    with torch.no_grad():  # random values everywhere; angles of order one per token (dt up to ~1)
        m.D.copy_(torch.randn_like(m.D))
        m.dt_bias.copy_(torch.randn_like(m.dt_bias))
        m.norm.weight.copy_(1 + 0.3 * torch.randn_like(m.norm.weight))
        if m.rope == "data":
            m.angle_proj.weight.copy_(torch.randn_like(m.angle_proj.weight))
    return m


def loop_reference(m: SSDMixer, hs: torch.Tensor, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """The block token by token in float64: the running angle and the SSD state restart at each document."""
    b, l, _ = hs.shape
    h, p, g, n = m.num_heads, m.head_dim, m.num_groups, m.state_size
    hs = hs.double()
    w = {k: v.double() for k, v in m.state_dict().items()}
    inner = h * p
    z, x, Bm, Cm, dt = (hs @ w["in_proj.weight"].T).split([inner, inner, g * n, g * n, h], dim=-1)
    x, Bm, Cm = F.silu(x), F.silu(Bm), F.silu(Cm)
    dt = F.softplus(dt + w["dt_bias"])
    A = -torch.exp(w["A_log"])
    rate = math.pi * torch.tanh(hs @ w["angle_proj.weight"].T)  # (b, l, n/2)
    half = n // 2
    out = torch.zeros(b, l, inner, dtype=torch.float64)
    for bi in range(b):
        for t in range(l):
            if t == 0 or (seq_idx is not None and seq_idx[bi, t] != seq_idx[bi, t - 1]):
                state = torch.zeros(h, p, n, dtype=torch.float64)
                phi = torch.zeros(h, half, dtype=torch.float64)
            y = torch.zeros(h, p, dtype=torch.float64)
            for head in range(h):
                phi[head] = phi[head] + dt[bi, t, head] * rate[bi, t]

                def rotate(v):
                    c, s = phi[head].cos(), phi[head].sin()
                    return torch.cat([v[:half] * c - v[half:] * s, v[half:] * c + v[:half] * s])
                grp = head // (h // g)
                bv, cv = rotate(Bm[bi, t, grp * n:(grp + 1) * n]), rotate(Cm[bi, t, grp * n:(grp + 1) * n])
                xv = x[bi, t, head * p:(head + 1) * p]
                state[head] = torch.exp(dt[bi, t, head] * A[head]) * state[head] + dt[bi, t, head] * torch.outer(xv, bv)
                y[head] = state[head] @ cv + w["D"][head] * xv
            gated = (y.reshape(-1) * F.silu(z[bi, t])).reshape(m.norm.num_groups, -1)
            gated = gated / torch.sqrt(gated.pow(2).mean(-1, keepdim=True) + m.norm.eps)
            out[bi, t] = gated.reshape(-1) * w["norm.weight"]
    return out @ w["out_proj.weight"].T


@pytest.mark.parametrize("dtype,bound", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_matches_the_per_token_loop(dtype, bound):
    torch.manual_seed(0)
    m = make_mixer(dtype)
    hs = torch.randn(2, 11, D_MODEL, dtype=dtype)
    ref = loop_reference(m, hs)
    assert rel_err(m(hs), ref) < bound
    # the angles themselves: shared w, per-head dt, float32 for a float32 layer
    dt = torch.rand(2, 11, HEADS, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    phi = m.data_angles(hs, dt)
    assert phi.shape == (2, 11, HEADS, STATE // 2) and phi.dtype == dt.dtype
    rate = math.pi * torch.tanh(hs.double() @ m.angle_proj.weight.double().T)
    assert rel_err(phi, (dt.double()[..., None] * rate[:, :, None]).cumsum(1)) < bound


def test_zero_w_is_no_rotation_and_a_constant_rate_is_rope_like():
    torch.manual_seed(1)
    m = make_mixer()
    with torch.no_grad():
        m.angle_proj.weight.zero_()
    plain = SSDMixer(D_MODEL, HEADS, HEAD_DIM, STATE, num_groups=GROUPS, chunk_size=4, rope="none").double()
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if k != "angle_proj.weight"})
    hs = torch.randn(2, 9, D_MODEL, dtype=torch.float64)
    assert rel_err(m(hs), plain(hs)) < 1e-12

    class Constant(torch.nn.Module):  # tanh(w·u) = c for every token and pair
        def forward(self, u):
            return torch.full((*u.shape[:-1], STATE // 2), math.atanh(0.3), dtype=u.dtype)
    m.angle_proj = Constant()
    dt = torch.full((2, 9, HEADS), 0.7, dtype=torch.float64)
    t = torch.arange(1, 10, dtype=torch.float64)[None, :, None, None]
    assert rel_err(m.data_angles(hs, dt), (t * 0.7 * math.pi * 0.3).expand(2, 9, HEADS, STATE // 2)) < 1e-14


def test_prefill_then_steps_equals_full_forward():
    torch.manual_seed(2)
    m = make_mixer()
    hs = torch.randn(2, 13, D_MODEL, dtype=torch.float64)
    full = m(hs)
    state = {}
    parts = [m(hs[:, :5], state=state)]
    parts += [m(hs[:, t:t + 1], state=state) for t in range(5, 9)]
    parts.append(m(hs[:, 9:], state=state))  # a multi-token call continuing the cache
    assert state["rope_angle"].shape == (2, HEADS, STATE // 2) and state["rope_angle"].dtype == torch.float64
    assert rel_err(torch.cat(parts, 1), full) < 1e-12


def test_padding_leaves_the_angle_unchanged():
    torch.manual_seed(3)
    m = make_mixer()
    hs = torch.randn(1, 6, D_MODEL, dtype=torch.float64)
    padded = torch.cat([torch.randn(1, 3, D_MODEL, dtype=torch.float64), hs], 1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    assert rel_err(m(padded, attention_mask=mask)[:, 3:], m(hs)) < 1e-12


def test_packed_rows_equal_documents_alone():
    torch.manual_seed(4)
    m = make_mixer()
    lengths = [3, 5, 4]
    docs = [torch.randn(1, n, D_MODEL, dtype=torch.float64) for n in lengths]
    seq_idx = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    packed = m(torch.cat(docs, 1), seq_idx=seq_idx)
    assert rel_err(packed, torch.cat([m(d) for d in docs], 1)) < 1e-12
    assert rel_err(packed, loop_reference(m, torch.cat(docs, 1), seq_idx)) < 1e-12


def test_gradients_reach_w_and_gradcheck():
    torch.manual_seed(5)
    m = make_mixer(torch.float32)
    m(torch.randn(2, 7, D_MODEL)).square().sum().backward()
    grad = m.angle_proj.weight.grad
    assert torch.isfinite(grad).all() and grad.abs().max() > 0

    tiny = make_mixer(hidden_size=6, num_heads=2, head_dim=2, state_size=4, num_groups=1, chunk_size=2)
    params = dict(tiny.named_parameters())

    def f(hs, w):
        return torch.func.functional_call(tiny, {**params, "angle_proj.weight": w}, (hs,))
    hs = torch.randn(1, 5, 6, dtype=torch.float64, requires_grad=True)
    w = params["angle_proj.weight"].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (hs, w))


def test_layer_and_config_arguments():
    with pytest.raises(ValueError, match="rope"):
        SSDMixer(D_MODEL, HEADS, HEAD_DIM, STATE, rope="foo")
    with pytest.raises(ValueError, match="state_size"):
        SSDMixer(D_MODEL, HEADS, HEAD_DIM, 7, rope="data")
    assert SSDMixer(D_MODEL, HEADS, HEAD_DIM, 7, use_rope=False).rope == "none"
    with pytest.raises(ValueError, match="ssd_rope.*'foo'"):
        CheemsConfig(ssd_rope="foo")
    with pytest.raises(ValueError, match="ssd_use_rope"):
        CheemsConfig(ssd_rope="data", ssd_use_rope=False)
    assert (CheemsConfig().ssd_rope, CheemsConfig().ssd_use_rope) == ("fixed", True)
    assert CheemsConfig(ssd_use_rope=False).ssd_rope == "none"
    cfg = CheemsConfig(ssd_rope="data")
    assert cfg.ssd_use_rope is True
    again = CheemsConfig.from_dict(cfg.to_dict())
    assert (again.ssd_rope, again.ssd_use_rope) == ("data", True)


@pytest.mark.parametrize("name", [n for n in wm.presets.names() if n.endswith("-tiny")])
def test_tiny_presets_keep_fixed_rope(name):
    cfg = wm.presets.get(name)
    assert cfg.ssd_rope == "fixed"
    model = wm.CheemsForCausalLM(cfg)
    for layer in model.modules():
        if type(layer) is SSDMixer:
            assert layer.rope == "fixed" and not hasattr(layer, "angle_proj")


def test_model_with_data_rope_caches_like_a_full_forward():
    torch.manual_seed(6)
    model = wm.CheemsForCausalLM(wm.presets.get("cheems-tiny", ssd_rope="data")).eval()
    x = torch.randint(0, model.config.vocab_size, (2, 15))
    with torch.no_grad():
        full = model(x, use_cache=False).logits
        cache = CheemsCache(model.config)
        parts = [model(x[:, :8], past_key_values=cache, use_cache=True).logits]
        parts += [model(x[:, t:t + 1], past_key_values=cache, use_cache=True).logits for t in range(8, 15)]
    assert rel_err(torch.cat(parts, 1), full) < 1e-5
