"""product_key_topk(backend="triton") (the fused kernel) against the brute-force oracle, on the CPU under
TRITON_INTERPRET=1 (float32, small shapes). The interpreter's configuration has blocks of 16 tokens and 16
sub-keys, so √N = 32 and 40 cross sub-key chunks and 37 tokens a token block; outputs start NaN-poisoned. The
same kernels run compiled on a GPU in test_experts_cuda.py (bf16/fp16).

Triton decides interpreted vs compiled when it is imported, so in a normal run ``test_interpreted_in_a_subprocess``
reruns this file in a child process with ``TRITON_INTERPRET=1``; there the real tests run.
"""
import pytest
import torch

from conftest import interpreted_only, interpreter_child_test, rel_err

pytest.importorskip("triton")

from wonderful_matrices.ops import product_key_topk

test_interpreted_in_a_subprocess = interpreter_child_test(__file__)


def assert_same_top_k(scores, ids, query, sub_keys, k, tol):
    """``scores``/``ids`` are a correct top k: each id's brute-force score equals its score, the scores descend,
    ids are distinct, and no expert left out scores more than the k-th (up to ``tol``)."""
    H, _, n, _ = sub_keys.shape
    q, keys = query.double(), sub_keys.double()
    every = (torch.einsum("...hd,had->...ha", q[..., 0, :], keys[:, 0])[..., :, None]
             + torch.einsum("...hd,hbd->...hb", q[..., 1, :], keys[:, 1])[..., None, :]).flatten(-2)  # (..., H, N)
    assert ids.dtype == torch.int64 and scores.dtype == torch.float32 and scores.shape == ids.shape
    assert ((ids >= 0) & (ids < n * n)).all()
    assert (ids.sort(-1).values.diff(dim=-1) > 0).all()
    assert rel_err(scores, every.gather(-1, ids)) <= tol
    assert (scores[..., :-1] >= scores[..., 1:]).all()
    best = every.topk(k, dim=-1).values
    assert rel_err(scores, best) <= tol


def make(batch, H, n, dk, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, H, 2, dk, generator=gen), torch.randn(H, 2, n, dk, generator=gen)


# (batch, H, n, dk, k): N = 16, 64, 1024 (n = 4, 8, 32: two sub-key chunks), an odd square (49), n = 40 (three
# chunks, the last partial), k not a power of two, k = n, one token, two leading dims, 37 tokens (3 token blocks)
# at cheems-base's n = 48, dk = 32, k = 8; n = 130
CASES = [
    ((1,), 1, 4, 3, 1),
    ((5,), 2, 4, 5, 4),
    ((7,), 2, 8, 8, 3),
    ((37,), 3, 32, 32, 16),
    ((2, 3), 2, 7, 6, 5),
    ((9,), 1, 40, 8, 12),
    ((4,), 2, 32, 16, 32),
    ((37,), 2, 48, 32, 8),
    ((21,), 1, 130, 4, 3),
]


@interpreted_only
@pytest.mark.parametrize("forward,backward", [("insertion", "reduced"), ("insertion", "atomic"),
                                              ("bitonic", "reduced")])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}H{c[1]}n{c[2]}dk{c[3]}k{c[4]}")
def test_forward_and_gradients_match_brute_force(case, forward, backward, monkeypatch):
    """Every case with each forward (FORWARD) and each backward of small tables (SMALL_TABLE_BACKWARD; n = 130
    always takes the atomic kernel of large tables)."""
    from wonderful_matrices.ops.product_key import topk_kernels

    batch, H, n, dk, k = case
    if backward != "atomic" and topk_kernels._pad(n, 16) > topk_kernels.SMALL_TABLE_KEYS and forward == "insertion":
        pytest.skip("a large table always takes the atomic backward (its 'atomic' case runs it)")
    if forward == "bitonic" and (n, k) == (32, 16):
        pytest.skip("interpreter time: the k = 32 case runs the same single-chunk path on a wider candidate tile")
    monkeypatch.setattr(topk_kernels, "FORWARD", forward)
    monkeypatch.setattr(topk_kernels, "SMALL_TABLE_BACKWARD", backward)
    query, sub_keys = make(batch, H, n, dk)
    q, keys = query.clone().requires_grad_(), sub_keys.clone().requires_grad_()
    scores, ids = product_key_topk(q, keys, k, backend="triton")
    assert scores.shape == (*batch, H, k)
    assert_same_top_k(scores, ids, query, sub_keys, k, 1e-6)
    ref_scores, ref_ids = product_key_topk(query.double(), sub_keys.double(), k, backend="naive")
    assert torch.equal(ids, ref_ids)  # random data: no ties, the same experts in the same order

    weight = torch.randn(scores.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad((scores * weight).sum(), (q, keys))
    q64, keys64 = query.double().requires_grad_(), sub_keys.double().requires_grad_()
    ref_scores, _ = product_key_topk(q64, keys64, k, backend="naive")
    ref = torch.autograd.grad((ref_scores * weight.double()).sum(), (q64, keys64))
    for name, a, b in zip(("query", "sub_keys"), got, ref):
        assert a.dtype == torch.float32 and torch.isfinite(a).all(), name
        assert b.abs().sum() > 0, name
        assert rel_err(a, b) < 1e-5, name


@interpreted_only
@pytest.mark.parametrize("forward", ["insertion", "bitonic"])
def test_ties_return_the_exact_top_scores(forward, monkeypatch):
    """Integer data makes many exact ties: the scores still equal brute force, ids distinct and scoring right."""
    from wonderful_matrices.ops.product_key import topk_kernels

    monkeypatch.setattr(topk_kernels, "FORWARD", forward)
    gen = torch.Generator().manual_seed(2)
    query = torch.randint(-2, 3, (20, 2, 2, 3), generator=gen).float()
    sub_keys = torch.randint(-2, 3, (2, 2, 6, 3), generator=gen).float()
    scores, ids = product_key_topk(query, sub_keys, 6, backend="triton")
    ref_scores, _ = product_key_topk(query.double(), sub_keys.double(), 6, backend="naive")
    assert torch.equal(scores.double(), ref_scores)
    assert_same_top_k(scores, ids, query, sub_keys, 6, 0.0)


@interpreted_only
def test_no_tokens():
    query, sub_keys = make((0,), 2, 4, 3)
    scores, ids = product_key_topk(query, sub_keys, 2, backend="triton")
    assert scores.shape == ids.shape == (0, 2, 2)


@interpreted_only
def test_triton_rejects_what_it_cannot_run():
    query, sub_keys = make((3,), 1, 9, 4)
    with pytest.raises(ValueError, match="query.dtype"):
        product_key_topk(query.double(), sub_keys.double(), 2, backend="triton")
    query, sub_keys = make((3,), 1, 40, 4)
    with pytest.raises(ValueError, match="k=33"):
        product_key_topk(query, sub_keys, 33, backend="triton")


@interpreted_only
def test_bitonic_forward_orders_signed_scores_and_infinities(monkeypatch):
    """The bitonic forward's packing keeps the float order across signs, zeros and -inf: queries whose sub-key
    scores are all negative, exactly zero or mixed, against brute force."""
    from wonderful_matrices.ops.product_key import topk_kernels

    monkeypatch.setattr(topk_kernels, "FORWARD", "bitonic")
    gen = torch.Generator().manual_seed(3)
    sub_keys = torch.randn(1, 2, 12, 4, generator=gen)
    query = torch.stack([-sub_keys[0, :, 0], torch.zeros(2, 4), torch.randn(2, 4, generator=gen) * 1e-3,
                         torch.randn(2, 4, generator=gen) * 1e3])[:, None]  # (4, 1, 2, 4)
    scores, ids = product_key_topk(query, sub_keys, 5, backend="triton")
    ref_scores, _ = product_key_topk(query.double(), sub_keys.double(), 5, backend="naive")
    assert rel_err(scores, ref_scores) <= 1e-6
    assert_same_top_k(scores, ids, query, sub_keys, 5, 1e-6)


@interpreted_only
def test_unknown_forward_is_rejected(monkeypatch):
    from wonderful_matrices.ops.product_key import topk_kernels

    monkeypatch.setattr(topk_kernels, "FORWARD", "heap")
    query, sub_keys = make((3,), 1, 9, 4)
    with pytest.raises(ValueError, match="FORWARD"):
        product_key_topk(query, sub_keys, 2, backend="triton")


@interpreted_only
def test_unknown_small_table_backward_is_rejected(monkeypatch):
    from wonderful_matrices.ops.product_key import topk_kernels

    monkeypatch.setattr(topk_kernels, "SMALL_TABLE_BACKWARD", "sparse")
    query, sub_keys = make((3,), 1, 9, 4)
    q = query.requires_grad_()
    scores, _ = product_key_topk(q, sub_keys, 2, backend="triton")
    with pytest.raises(ValueError, match="SMALL_TABLE_BACKWARD"):
        scores.sum().backward()


def test_kinds_switches_and_restores():
    """topk_kernels.kinds: the given switches inside the block, both as they were after it (an error included)."""
    from wonderful_matrices.ops.product_key import topk_kernels

    before = topk_kernels.FORWARD, topk_kernels.SMALL_TABLE_BACKWARD
    with topk_kernels.kinds(forward="bitonic"):
        assert (topk_kernels.FORWARD, topk_kernels.SMALL_TABLE_BACKWARD) == ("bitonic", before[1])
    with pytest.raises(KeyError), topk_kernels.kinds(small_table_backward="atomic"):
        assert topk_kernels.SMALL_TABLE_BACKWARD == "atomic"
        raise KeyError
    assert (topk_kernels.FORWARD, topk_kernels.SMALL_TABLE_BACKWARD) == before


def test_auto_forward_by_table_size(monkeypatch):
    """FORWARD = "auto" (the default) sorts by bitonic networks up to BITONIC_MAX_KEYS sub-keys per half, where it
    was timed faster (cheems-base's 48), and inserts above (2^20 experts' 1024); a named forward holds at every
    size."""
    from wonderful_matrices.ops.product_key import topk_kernels

    assert topk_kernels.FORWARD == "auto"
    limit = topk_kernels.BITONIC_MAX_KEYS
    assert [topk_kernels.forward_kind(n) for n in (1, 48, limit, limit + 1, 1024)] == \
        ["bitonic"] * 3 + ["insertion"] * 2
    for forward in topk_kernels.FORWARDS:
        monkeypatch.setattr(topk_kernels, "FORWARD", forward)
        assert {topk_kernels.forward_kind(n) for n in (1, 48, 1024)} == {forward}
