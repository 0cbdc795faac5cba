"""SSDMixer: against a plain per-token reference of the block, RoPE behaviour, caching, padding, arguments."""
import pytest
import torch
import torch.nn.functional as F

from conftest import rel_err
from wonderful_matrices.layers import SSDMixer

D_MODEL, HEADS, HEAD_DIM, STATE = 24, 4, 6, 8


def make_mixer(dtype=torch.float64, **kw):
    args = dict(hidden_size=D_MODEL, num_heads=HEADS, head_dim=HEAD_DIM, state_size=STATE, num_groups=2,
                chunk_size=4)
    args.update(kw)
    m = SSDMixer(**args).to(dtype)
    with torch.no_grad():  # random (non-default) values everywhere, so every parameter matters
        m.D.copy_(torch.randn_like(m.D))
        m.norm.weight.copy_(1 + 0.3 * torch.randn_like(m.norm.weight))
        if m.use_conv and m.conv1d.bias is not None:
            m.conv1d.bias.copy_(0.2 * torch.randn_like(m.conv1d.bias))
    return m


def positions(b, l, start=0):
    return (torch.arange(l) + start)[None].expand(b, -1)


def reference_block(m: SSDMixer, hs: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The block written out token by token in float64 (no conv), RoPE from its formula."""
    b, l, _ = hs.shape
    h, p, g, n = m.num_heads, m.head_dim, m.num_groups, m.state_size
    hs = hs.double()
    w = {k: v.double() for k, v in m.state_dict().items()}
    proj = hs @ w["in_proj.weight"].T
    inner = h * p
    z, x, Bm, Cm, dt = proj.split([inner, inner, g * n, g * n, h], dim=-1)
    x, Bm, Cm = F.silu(x), F.silu(Bm), F.silu(Cm)
    dt = F.softplus(dt + w["dt_bias"])
    A = -torch.exp(w["A_log"])
    out = torch.zeros(b, l, inner, dtype=torch.float64)
    for bi in range(b):
        state = torch.zeros(h, p, n, dtype=torch.float64)
        for t in range(l):
            def rope(v):
                if not m.use_rope:
                    return v
                half = n // 2
                freq = 10000.0 ** (-torch.arange(half, dtype=torch.float64) * 2 / n)
                ang = pos[bi, t].double() * freq
                v1, v2 = v[:half], v[half:]
                return torch.cat([v1 * ang.cos() - v2 * ang.sin(), v2 * ang.cos() + v1 * ang.sin()])
            y = torch.zeros(h, p, dtype=torch.float64)
            for head in range(h):
                grp = head // (h // g)
                bv = rope(Bm[bi, t, grp * n:(grp + 1) * n])
                cv = rope(Cm[bi, t, grp * n:(grp + 1) * n])
                xv = x[bi, t, head * p:(head + 1) * p]
                state[head] = torch.exp(dt[bi, t, head] * A[head]) * state[head] + dt[bi, t, head] * torch.outer(xv, bv)
                y[head] = state[head] @ cv + w["D"][head] * xv
            gated = y.reshape(-1) * F.silu(z[bi, t])
            grouped = gated.reshape(m.norm.num_groups, -1)
            grouped = grouped / torch.sqrt(grouped.pow(2).mean(-1, keepdim=True) + m.norm.eps)
            out[bi, t] = grouped.reshape(-1) * w["norm.weight"]
    return out @ w["out_proj.weight"].T


@pytest.mark.parametrize("use_rope", [True, False])
@pytest.mark.parametrize("num_groups,norm_groups", [(1, None), (2, None), (2, 1), (4, 2)])
def test_matches_the_per_token_reference(use_rope, num_groups, norm_groups):
    m = make_mixer(use_rope=use_rope, num_groups=num_groups, norm_groups=norm_groups)
    hs = torch.randn(2, 9, D_MODEL, dtype=torch.float64)
    pos = torch.stack([torch.arange(9) + 3, torch.arange(9) * 2])
    # layers/rotary.py computes cos/sin and the rotation in float32 even for float64 inputs
    assert rel_err(m(hs, pos), reference_block(m, hs, pos)) < (1e-6 if use_rope else 1e-12)


def test_rope_sees_relative_positions_only():
    m = make_mixer()
    hs = torch.randn(2, 13, D_MODEL, dtype=torch.float64)
    base = m(hs, positions(2, 13))
    assert rel_err(m(hs, positions(2, 13, start=1000)), base) < 1e-9  # uniform shift: same output
    gapped = torch.cat([torch.arange(6), torch.arange(6, 13) + 5])[None].expand(2, -1)
    assert rel_err(m(hs, gapped), base) > 1e-3  # non-uniform shift: RoPE changes the result

    plain = make_mixer(use_rope=False)
    plain.load_state_dict(m.state_dict())
    assert rel_err(plain(hs, positions(2, 13)), base) > 1e-3  # RoPE on and off differ with the same weights
    assert rel_err(plain(hs, gapped), plain(hs, positions(2, 13))) < 1e-12  # without RoPE positions are ignored


def test_gradients_reach_every_parameter_and_match_the_naive_backend():
    hs = torch.randn(2, 10, D_MODEL, dtype=torch.float64)
    fast = make_mixer(use_conv=True)
    slow = make_mixer(use_conv=True, backend="naive")
    slow.load_state_dict(fast.state_dict())
    grads = []
    for m in (fast, slow):
        inp = hs.clone().requires_grad_(True)
        m(inp, positions(2, 10)).pow(2).sum().backward()
        grads.append({"input": inp.grad, **{k: v.grad for k, v in m.named_parameters()}})
    for name, g in grads[0].items():
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
        assert rel_err(g, grads[1][name]) < 1e-10, name


@pytest.mark.parametrize("use_conv", [False, True])
@pytest.mark.parametrize("num_groups", [1, 2])
@pytest.mark.parametrize("dtype,bound", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_prefill_then_steps_equals_full_forward(use_conv, num_groups, dtype, bound):
    m = make_mixer(dtype, use_conv=use_conv, num_groups=num_groups)
    b, l = 2, 14
    hs = torch.randn(b, l, D_MODEL, dtype=dtype)
    pos = positions(b, l, start=2)
    full = m(hs, pos)
    state = {}
    pieces = []
    for lo, hi in [(0, 5), (5, 6), (6, 7), (7, 10), (10, 11), (11, 14)]:  # prefill, steps, a 3-token call, ...
        pieces.append(m(hs[:, lo:hi], pos[:, lo:hi], None, state))
    assert rel_err(torch.cat(pieces, 1), full) < bound
    assert state["ssm_state"].shape == (b, HEADS, HEAD_DIM, STATE)
    assert state["ssm_state"].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert ("conv_state" in state) == use_conv
    if use_conv:
        assert state["conv_state"].shape == (b, m.conv_dim, 3)


def test_single_token_prefill_then_steps():
    m = make_mixer(use_conv=True)
    hs = torch.randn(1, 4, D_MODEL, dtype=torch.float64)
    full = m(hs, positions(1, 4))
    state = {}
    steps = [m(hs[:, t:t + 1], positions(1, 1, start=t), None, state) for t in range(4)]
    assert rel_err(torch.cat(steps, 1), full) < 1e-10


@pytest.mark.parametrize("use_conv", [False, True])
def test_left_padding_does_not_change_real_tokens(use_conv):
    m = make_mixer(use_conv=use_conv)
    pad, l, extra = 3, 7, 3
    hs = torch.randn(1, l + extra, D_MODEL, dtype=torch.float64)
    alone = m(hs, positions(1, l + extra))
    junk = 5 * torch.randn(1, pad, D_MODEL, dtype=torch.float64)
    other = torch.randn(1, pad + l, D_MODEL, dtype=torch.float64)
    batch = torch.cat([torch.cat([junk, hs[:, :l]], 1), other])
    mask = torch.ones(2, pad + l, dtype=torch.long)
    mask[0, :pad] = 0
    pos = torch.stack([(mask[0].cumsum(0) - 1).clamp_min(0), torch.arange(pad + l)])
    state = {}
    out = m(batch, pos, mask, state)
    assert rel_err(out[0, pad:], alone[0, :l]) < 1e-10
    # decoding continues from the padded prefill exactly as from the unpadded one
    for t in range(extra):
        step_in = torch.cat([hs[:, l + t:l + t + 1], torch.randn(1, 1, D_MODEL, dtype=torch.float64)])
        step_pos = torch.tensor([[l + t], [pad + l + t]])
        y = m(step_in, step_pos, torch.ones(2, 1), state)
        assert rel_err(y[0], alone[0, l + t:l + t + 1]) < 1e-10


@pytest.mark.parametrize("use_conv", [False, True])
def test_padded_steps_after_real_tokens_are_invisible(use_conv):
    m = make_mixer(use_conv=use_conv)
    hs = torch.randn(1, 9, D_MODEL, dtype=torch.float64)
    alone = m(hs, positions(1, 9))
    state = {}
    m(hs[:, :5], positions(1, 5), None, state)
    before = {k: v.clone() for k, v in state.items()}
    m(torch.randn(1, 1, D_MODEL, dtype=torch.float64), positions(1, 1, start=5), torch.zeros(1, 1), state)
    for k in before:  # a padded decoding step leaves the whole cache unchanged
        assert torch.equal(state[k], before[k]), k
    junk = torch.randn(1, 2, D_MODEL, dtype=torch.float64)
    both = torch.cat([hs[:, 5:7], junk], 1)  # two real tokens then two padded ones in one call
    out = m(both, positions(1, 4, start=5), torch.tensor([[1, 1, 0, 0]]), state)
    assert rel_err(out[:, :2], alone[:, 5:7]) < 1e-10
    rest = m(hs[:, 7:], positions(1, 2, start=7), None, state)
    assert rel_err(rest, alone[:, 7:]) < 1e-10


def test_padding_mask_without_cache_and_bf16_forward():
    m32 = make_mixer(torch.float32)
    hs = torch.randn(2, 11, D_MODEL)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, :4] = False
    pos = positions(2, 11)
    ref = m32(hs, pos, mask)
    assert rel_err(m32(hs[1:, 4:], positions(1, 7, start=4)), ref[1:, 4:]) < 1e-5
    mbf = make_mixer(torch.bfloat16)
    mbf.load_state_dict(m32.state_dict())
    out = mbf(hs.bfloat16(), pos, mask)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) < 2e-2


def test_ssd_inputs_keep_the_activation_dtype_under_autocast(monkeypatch):
    # x, B, C reach the op in bf16 (the Triton kernels use tensor cores for half inputs and exact float32
    # products for float32 ones); dt and A in float32. The result stays close to the float32 layer.
    import wonderful_matrices.layers.ssd as layer_module

    seen = {}
    real = layer_module.ssd

    def spy(x, dt, A, B, C, **kw):
        seen.update(x=x.dtype, dt=dt.dtype, A=A.dtype, B=B.dtype, C=C.dtype)
        return real(x, dt, A, B, C, **kw)

    monkeypatch.setattr(layer_module, "ssd", spy)
    m = make_mixer(torch.float32)
    hs, pos = torch.randn(2, 9, D_MODEL), positions(2, 9)
    ref = m(hs, pos)
    assert seen == dict(x=torch.float32, dt=torch.float32, A=torch.float32, B=torch.float32, C=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(hs, pos)
    assert seen == dict(x=torch.bfloat16, dt=torch.float32, A=torch.float32, B=torch.bfloat16, C=torch.bfloat16)
    assert rel_err(out.float(), ref) < 3e-2


@pytest.mark.parametrize("kwargs,argument", [
    (dict(num_heads=3), "num_groups"),
    (dict(chunk_size=48), "chunk_size"),
    (dict(state_size=7), "state_size"),
    (dict(norm_groups=5), "norm_groups"),
    (dict(head_dim=0), "head_dim"),
    (dict(dt_min=0.5, dt_max=0.1), "dt_min"),
    (dict(dt_limit=(1.0, 0.5)), "dt_limit"),
])
def test_bad_constructor_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=f"^{argument}="):
        make_mixer(**kwargs)


def test_bad_forward_arguments():
    m = make_mixer()
    hs = torch.randn(2, 5, D_MODEL, dtype=torch.float64)
    with pytest.raises(ValueError, match="^hidden_states.shape="):
        m(hs[..., :-1], positions(2, 5))
    with pytest.raises(ValueError, match="^position_ids="):
        m(hs, None)
    with pytest.raises(ValueError, match="^position_ids.shape="):
        m(hs, positions(2, 4))
    with pytest.raises(ValueError, match="^attention_mask.shape="):
        m(hs, positions(2, 5), torch.ones(2, 6))
    with pytest.raises(ValueError, match="^state="):
        m(hs, positions(2, 5), None, [])
