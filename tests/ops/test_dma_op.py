import math

import pytest
import torch
import torch.nn.functional as F

from conftest import rel_err
from wonderful_matrices.ops import dynamic_mask_attention
from wonderful_matrices.ops.dma import selectable_keys
from wonderful_matrices.ops.dma import windowed as dma_torch
from wonderful_matrices.ops.dma.naive import dynamic_mask_attention_naive


def make_inputs(b, lq, lk, hq, hkv, d, dtype, bias_kind, pad=False):
    q = torch.randn(b, lq, hq, d, dtype=dtype)
    k = torch.randn(b, lk, hkv, d, dtype=dtype)
    v = torch.randn(b, lk, hkv, d, dtype=dtype)
    if bias_kind == "randn":
        bias = torch.randn(b, lk, hkv, dtype=dtype) * 2
    elif bias_kind == "int":  # many ties
        bias = torch.randint(-2, 2, (b, lk, hkv)).to(dtype)
    else:
        bias = torch.zeros(b, lk, hkv, dtype=dtype)
    if pad:  # padded keys: the first two keys of batch row 0, one later key of every row
        bias[0, :2] = float("-inf")
        bias[:, lk // 2, 0] = float("-inf")
    return q, k, v, bias


def close(a, ref, tol):
    """rel_err, with the reference norm floored at 1 (gradients are exactly zero when w == 1 or all padded)."""
    return (a.double() - ref.double()).norm().item() <= tol * max(ref.double().norm().item(), 1.0)


def grads(fn, q, k, v, bias, weight):
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v, bias)]
    out = fn(*leaves)
    (out.double() * weight).sum().backward()
    return out.detach(), [t.grad for t in leaves]


# (b, lq, lk, hq, hkv, d, keep_window, causal, block): windows 1, small, >= length and None; causal and not;
# GQA; lq < lk; blocks that do not divide the length.
CASES = [
    (2, 13, 13, 4, 2, 8, 3, True, 4),
    (1, 9, 20, 2, 1, 6, 5, True, 3),
    (2, 16, 16, 2, 1, 8, 1, True, 5),
    (1, 1, 7, 3, 3, 4, 2, True, 4),
    (1, 1, 1, 2, 1, 4, 1, True, 4),
    (2, 17, 17, 2, 2, 8, None, True, None),
    (1, 6, 15, 4, 1, 8, None, True, None),
    (1, 10, 10, 2, 1, 8, 10, True, None),
    (2, 12, 12, 2, 2, 8, 40, True, None),
    (2, 7, 11, 4, 2, 8, 4, False, None),
    (1, 9, 5, 2, 2, 4, 2, False, None),
    (1, 5, 9, 2, 2, 4, None, False, None),
    (2, 30, 30, 4, 2, 8, 6, True, None),
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("bias_kind", ["randn", "int", "zero"])
def test_torch_matches_oracle_float64(case, bias_kind):
    b, lq, lk, hq, hkv, d, w, causal, block = case
    q, k, v, bias = make_inputs(b, lq, lk, hq, hkv, d, torch.float64, bias_kind, pad=lk > 4)
    weight = torch.randn(b, lq, hq, d, dtype=torch.float64)
    scale = d ** -0.5
    got, g_got = grads(lambda *a: dma_torch.dynamic_mask_attention_torch(*a, w, causal, scale, block),
                       q, k, v, bias, weight)
    ref, g_ref = grads(lambda *a: dynamic_mask_attention_naive(*a, w, causal, scale), q, k, v, bias, weight)
    assert not torch.isnan(got).any()
    assert rel_err(got, ref) < 1e-10
    for name, a, r in zip(("q", "k", "v", "bias"), g_got, g_ref):
        assert close(a, r, 1e-10), name


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[5], CASES[9], CASES[12]])
def test_torch_matches_oracle_float32(case):
    b, lq, lk, hq, hkv, d, w, causal, block = case
    q, k, v, bias = make_inputs(b, lq, lk, hq, hkv, d, torch.float64, "randn", pad=True)
    weight = torch.randn(b, lq, hq, d, dtype=torch.float64)
    scale = d ** -0.5
    got, g_got = grads(lambda *a: dynamic_mask_attention(*a, keep_window=w, causal=causal, backend="torch"),
                       *(t.float() for t in (q, k, v, bias)), weight)
    assert got.dtype == torch.float32
    ref, g_ref = grads(lambda *a: dynamic_mask_attention_naive(*a, w, causal, scale), q, k, v, bias, weight)
    assert rel_err(got, ref) < 1e-5
    for a, r in zip(g_got, g_ref):
        assert close(a, r, 1e-5)


@pytest.mark.parametrize("w", [None, 3])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward(w, dtype):
    q, k, v, bias = make_inputs(2, 19, 19, 4, 2, 16, dtype, "randn", pad=True)
    bias = bias.float()  # the layer passes a float32 bias
    out = dynamic_mask_attention(q, k, v, bias, keep_window=w)
    assert out.dtype == dtype
    ref = dynamic_mask_attention_naive(q.double(), k.double(), v.double(), bias.double(), w, True, 0.25)
    assert rel_err(out, ref) < 1e-2


def test_public_backends_agree_and_auto_is_torch():
    q, k, v, bias = make_inputs(1, 8, 8, 2, 1, 4, torch.float64, "randn")
    a = dynamic_mask_attention(q, k, v, bias, keep_window=3, backend="naive")
    b = dynamic_mask_attention(q, k, v, bias, keep_window=3)
    assert rel_err(b, a) < 1e-12
    assert not torch.equal(a, dynamic_mask_attention(q, k, v, bias, keep_window=2, backend="naive"))


@pytest.mark.parametrize("w", [1, 4])
def test_zero_bias_window_is_sliding_window_attention(w):
    b, l, h, d = 2, 23, 3, 8
    q, k, v = (torch.randn(b, l, h, d, dtype=torch.float64) for _ in range(3))
    out = dma_torch.dynamic_mask_attention_torch(q, k, v, torch.zeros(b, l, h, dtype=torch.float64), w, True,
                                                 d ** -0.5, 5)
    i = torch.arange(l)[:, None]
    j = torch.arange(l)[None, :]
    band = (j <= i) & (j > i - w)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d)
    ref = torch.einsum("bhij,bjhd->bihd", scores.masked_fill(~band, float("-inf")).softmax(-1), v)
    assert rel_err(out, ref) < 1e-12


@pytest.mark.parametrize("w", [None, 1, 3, 100])
def test_no_output_depends_on_a_future_key(w):
    q, k, v, bias = make_inputs(1, 20, 20, 2, 1, 8, torch.float64, "randn")
    base = dma_torch.dynamic_mask_attention_torch(q, k, v, bias, w, True, 0.3, 4)
    t = 11
    k2, v2, b2 = k.clone(), v.clone(), bias.clone()
    k2[:, t + 1:] = torch.randn_like(k2[:, t + 1:])
    v2[:, t + 1:] = torch.randn_like(v2[:, t + 1:])
    b2[:, t + 1:] = 50.0  # future keys that outrank every past key
    changed = dma_torch.dynamic_mask_attention_torch(q, k2, v2, b2, w, True, 0.3, 4)
    assert torch.equal(changed[:, : t + 1], base[:, : t + 1])
    assert not torch.allclose(changed[:, t + 1:], base[:, t + 1:])


@pytest.mark.parametrize("w", [None, 2, 5])
def test_huge_biases_stay_finite(w):
    q, k, v, bias = make_inputs(2, 14, 14, 2, 2, 8, torch.float32, "randn")
    bias = torch.where(torch.rand_like(bias) < 0.5, 1e4, -1e4) + bias
    weight = torch.randn(2, 14, 2, 8, dtype=torch.float64)
    got, g_got = grads(lambda *a: dynamic_mask_attention(*a, keep_window=w), q, k, v, bias, weight)
    ref = dynamic_mask_attention_naive(*(t.double() for t in (q, k, v, bias)), w, True, 8 ** -0.5)
    assert torch.isfinite(got).all() and all(torch.isfinite(g).all() for g in g_got)
    # float32 spacing at 1e4 is ~1e-3: adding q·k to such a bias in float32 costs ~1e-4 relative, in any kernel
    assert rel_err(got, ref) < 1e-3
    for dtype in (torch.bfloat16, torch.float16):
        half = dynamic_mask_attention(q.to(dtype), k.to(dtype), v.to(dtype), bias, keep_window=w)
        assert torch.isfinite(half).all()
        assert rel_err(half, ref) < 2e-2


def finfo_min_padding_case(lk: int = 37, padded: int = 4):
    """Inputs whose first ``padded`` keys carry an HF-style mask value, ``torch.finfo(float32).min`` (finite), and a
    loss weight that leaves out the queries seeing only them (as a padding query's output is left out)."""
    torch.manual_seed(0)
    q, k, v, bias = make_inputs(1, lk, lk, 2, 1, 8, torch.float32, "randn")
    bias[:, :padded] = torch.finfo(torch.float32).min
    weight = torch.randn(1, lk, 2, 8, dtype=torch.float64)
    weight[:, :padded] = 0
    return (q, k, v, bias), weight


@pytest.mark.parametrize("w", [None, 3, 36, 100])
def test_a_finfo_min_mask_is_finite_and_matches_the_oracle(w):
    """A mask of ``finfo.min`` (finite) in place of ``-inf``: its value over ``1 / scale`` overflowed float32 in the
    torch path (NaN for every query) and, in the Triton kernels, turned into ``-inf`` (zeros where the oracle averages
    the masked keys). The fast paths raise such values to ``BIAS_FLOOR``: the output of every query and the gradients
    of the queries that see an ordinary key are the oracle's (docs: those of a query seeing only masked keys are
    not exact)."""
    inputs, weight = finfo_min_padding_case()
    out, g = grads(lambda *a: dynamic_mask_attention(*a, keep_window=w, backend="torch"), *inputs, weight)
    ref, g_ref = grads(lambda *a: dynamic_mask_attention_naive(*a, w, True, 8 ** -0.5),
                       *(t.double() for t in inputs), weight)
    assert torch.isfinite(out).all() and all(torch.isfinite(t).all() for t in g)
    assert rel_err(out, ref) < 1e-5
    for name, a, r in zip("qkv", g, g_ref):
        assert rel_err(a, r) < 1e-5, name
    assert rel_err(g[3], g_ref[3]) < 1e-5  # the bias gradient, the masked keys' included (straight through)


@pytest.mark.parametrize("w", [None, 2])
@pytest.mark.parametrize("causal", [True, False])
def test_query_with_no_attendable_key_outputs_zeros(w, causal):
    q, k, v, bias = make_inputs(2, 6, 6, 2, 1, 4, torch.float32, "randn")
    bias[0, :3] = float("-inf")  # batch row 0: the first three queries see only padding when causal
    bias[1] = float("-inf")  # batch row 1: everything padded
    weight = torch.randn(2, 6, 2, 4, dtype=torch.float64)
    out, g = grads(lambda *a: dynamic_mask_attention(*a, keep_window=w, causal=causal), q, k, v, bias, weight)
    assert torch.isfinite(out).all() and all(torch.isfinite(t).all() for t in g)
    assert (out[1] == 0).all()
    if causal:
        assert (out[0, :3] == 0).all() and (out[0, 3:] != 0).all()
    ref = dynamic_mask_attention_naive(q.double(), k.double(), v.double(), bias.double(), w, causal, 0.5)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("documents", [False, True])
@pytest.mark.parametrize("lk,lq", [(1, 1), (37, 37), (37, 9), (200, 200)])
def test_attendable_queries_brute_force(lk, lq, documents):
    """attendable_queries against a loop over (row, head, query): some visible key of the query's document (all
    earlier keys without documents) has a finite bias."""
    from wonderful_matrices.ops.dma.windowed import attendable_queries

    if documents and lq != lk:
        pytest.skip("documents: queries are every position")
    gen = torch.Generator().manual_seed(lk * 7 + lq)
    b, hkv = 3, 2
    bias = torch.randn(b, lk, hkv, generator=gen)
    bias[torch.rand(b, lk, hkv, generator=gen) < 0.6] = float("-inf")
    bias[0, :, 0] = float("-inf")  # a head with no finite key at all
    seq_idx = None
    if documents:
        starts = torch.rand(b, lk, generator=gen) < 0.1
        starts[:, 0] = False
        seq_idx = starts.cumsum(1)
    got = attendable_queries(bias, lq, seq_idx)
    assert got.shape == (b, lq, hkv) and got.dtype == torch.bool
    want = torch.zeros(b, lq, hkv, dtype=torch.bool)
    for r in range(b):
        for i in range(lq):
            pos = lk - lq + i
            first = 0 if seq_idx is None else int((seq_idx[r] == seq_idx[r, pos]).nonzero()[0])
            want[r, i] = torch.isfinite(bias[r, first:pos + 1]).any(0)
    assert torch.equal(got, want)
    if documents:  # the document branch is a custom operator under torch.compile: its fake agrees with it
        torch.library.opcheck(torch.ops.wonderful_matrices.attendable_in_documents, (bias, seq_idx))


def test_windowed_path_never_builds_a_full_mask(monkeypatch):
    seen = []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append((tuple(k.shape), None if attn_mask is None else tuple(attn_mask.shape)))
        return original(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(dma_torch.F, "scaled_dot_product_attention", spy)
    l, w, block = 600, 8, 64
    q, k, v, bias = make_inputs(1, l, l, 2, 1, 8, torch.float32, "randn")
    dynamic_mask_attention(q, k, v, bias, keep_window=w)
    assert seen and all(ks[-2] == w + block and ms[-1] == w + block for ks, ms in seen)


@pytest.mark.parametrize("blocks_per_call", [1, 2])
def test_windowed_path_in_several_attention_calls_matches_oracle(monkeypatch, blocks_per_call):
    """Long rows split the blocks over several SDPA calls (MASK_ELEMENTS_PER_CALL): the same output and gradients;
    with 2 blocks a call, the last call holds the one block left (7 blocks of 5 queries)."""
    b, l, hq, hkv, d, w, block = 2, 33, 4, 2, 8, 6, 5
    monkeypatch.setattr(dma_torch, "MASK_ELEMENTS_PER_CALL", blocks_per_call * b * hkv * block * (w + block))
    q, k, v, bias = make_inputs(b, l, l, hq, hkv, d, torch.float64, "int", pad=True)
    weight = torch.randn(b, l, hq, d, dtype=torch.float64)
    calls = []
    original = F.scaled_dot_product_attention
    monkeypatch.setattr(dma_torch.F, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(1) or original(*a, **kw))
    got, g_got = grads(lambda *a: dma_torch.dynamic_mask_attention_torch(*a, w, True, d ** -0.5, block),
                       q, k, v, bias, weight)
    assert len(calls) == -(-7 // blocks_per_call)
    ref, g_ref = grads(lambda *a: dynamic_mask_attention_naive(*a, w, True, d ** -0.5), q, k, v, bias, weight)
    assert rel_err(got, ref) < 1e-10
    for name, a, r in zip(("q", "k", "v", "bias"), g_got, g_ref):
        assert close(a, r, 1e-10), name


def test_bounded_cache_decoding_equals_full_attention():
    """Token-by-token decoding over a cache pruned to keep_window keys equals the full op."""
    b, l, hq, hkv, d, w = 2, 30, 4, 2, 8, 4
    q, k, v, bias = make_inputs(b, l, l, hq, hkv, d, torch.float64, "int", pad=True)
    full = dynamic_mask_attention(q, k, v, bias, keep_window=w)
    ck, cv, cb = k[:, :0], v[:, :0], bias[:, :0]
    outs = []
    for t in range(l):
        ck, cv, cb = (torch.cat([c, x[:, t:t + 1]], 1) for c, x in ((ck, k), (cv, v), (cb, bias)))
        outs.append(dynamic_mask_attention(q[:, t:t + 1], ck, cv, cb, keep_window=w))
        keep = selectable_keys(cb, w)
        assert keep.shape[1] <= w
        ck = ck.gather(1, keep[..., None].expand(-1, -1, -1, d))
        cv = cv.gather(1, keep[..., None].expand(-1, -1, -1, d))
        cb = cb.gather(1, keep)
    assert rel_err(torch.cat(outs, 1), full) < 1e-12


def test_selectable_keys_ranks_ties_to_later():
    bias = torch.tensor([[3.0, 1.0, 1.0, float("-inf"), 1.0, 0.0]]).T[None]  # (1, 6, 1)
    assert selectable_keys(bias, 3)[0, :, 0].tolist() == [0, 2, 4]
    assert selectable_keys(bias, 6)[0, :, 0].tolist() == list(range(6))


BAD = [
    (dict(keep_window=0), "keep_window"),
    (dict(keep_window=2.5), "keep_window"),
    (dict(keep_window=True), "keep_window"),
    (dict(scale=-1.0), "scale"),
    (dict(scale=True), "scale"),
    (dict(q=torch.randn(0, 4, 4, 8), k=torch.randn(0, 6, 2, 8), v=torch.randn(0, 6, 2, 8), bias=torch.randn(0, 6, 2)),
     "non-empty batch"),
    (dict(backend="cuda"), "backend"),
    (dict(causal="yes"), "causal"),
    (dict(q=torch.randn(1, 9, 4, 8)), "q_len"),
    (dict(q=torch.randn(1, 4, 3, 8)), "q_heads"),
    (dict(q=torch.randn(1, 4, 4)), "q.shape"),
    (dict(k=torch.randn(1, 6, 2, 4)), "k.shape"),
    (dict(v=torch.randn(1, 6, 2, 7)), "v.shape"),
    (dict(bias=torch.randn(1, 6)), "bias.shape"),
    (dict(bias=torch.randint(0, 2, (1, 6, 2))), "bias.dtype"),
    (dict(k=torch.randn(1, 6, 2, 8, dtype=torch.float64)), "dtype"),
    (dict(q=torch.randn(2, 4, 4, 8)), "k.shape"),
]


@pytest.mark.parametrize("override,argument", BAD, ids=[a for _, a in BAD])
def test_bad_arguments_raise_value_error(override, argument):
    args = dict(q=torch.randn(1, 4, 4, 8), k=torch.randn(1, 6, 2, 8), v=torch.randn(1, 6, 2, 8),
                bias=torch.randn(1, 6, 2))
    args.update(override)
    with pytest.raises(ValueError, match=argument):
        dynamic_mask_attention(**args)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_bias_with_nan_or_plus_inf_is_refused_unless_trusted(bad):
    from wonderful_matrices.ops.common import trusted_values

    q, k, v = torch.randn(1, 4, 4, 8), torch.randn(1, 6, 2, 8), torch.randn(1, 6, 2, 8)
    bias = torch.randn(1, 6, 2)
    bias[0, 3, 1] = bad
    with pytest.raises(ValueError, match=r"^bias="):
        dynamic_mask_attention(q, k, v, bias)
    bias[0, 3, 1] = float("-inf")  # padding stays allowed
    assert dynamic_mask_attention(q, k, v, bias).isfinite().all()
    bias[0, 3, 1] = bad
    with trusted_values():  # layers whose bias is valid by construction skip the device sync
        dynamic_mask_attention(q, k, v, bias, backend="torch")
