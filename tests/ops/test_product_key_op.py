"""product_key_topk: the O(√N + k²) torch path equals brute force over all N experts."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import rel_err
from wonderful_matrices.ops import product_key_topk


def make(batch, H, n, dk, dtype=torch.float64):
    query = torch.randn(*batch, H, 2, dk, dtype=dtype)
    sub_keys = torch.randn(H, 2, n, dk, dtype=dtype)
    return query, sub_keys


@pytest.mark.parametrize("batch,H,n,dk,k", [
    ((1,), 1, 4, 3, 1),        # N = 16, one token
    ((5,), 2, 8, 5, 8),        # k = √N
    ((2, 3), 3, 16, 8, 5),     # N = 256, two leading dims
    ((7,), 4, 7, 6, 3),        # N = 49 (odd square)
    ((2, 1, 3), 2, 32, 4, 16), # N = 1024
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_topk_equals_brute_force(batch, H, n, dk, k, dtype):
    query, sub_keys = make(batch, H, n, dk, dtype)
    scores, ids = product_key_topk(query, sub_keys, k, backend="torch")
    ref_scores, ref_ids = product_key_topk(query, sub_keys, k, backend="naive")
    assert scores.shape == ids.shape == (*batch, H, k) and ids.dtype == torch.int64
    assert torch.equal(ids, ref_ids)
    assert rel_err(scores, ref_scores) < (1e-12 if dtype == torch.float64 else 1e-6)
    assert (scores[..., :-1] >= scores[..., 1:]).all()
    # an independent recomputation of each returned expert's score from its id a*n + b
    a, b = ids // n, ids % n
    q0, q1 = query[..., 0, :], query[..., 1, :]
    heads = torch.arange(H)[:, None].expand_as(ids)
    k0, k1 = sub_keys[heads, 0, a], sub_keys[heads, 1, b]  # (..., H, k, dk)
    direct = (q0.unsqueeze(-2) * k0).sum(-1) + (q1.unsqueeze(-2) * k1).sum(-1)
    assert rel_err(scores, direct) < (1e-12 if dtype == torch.float64 else 1e-6)


def test_brute_force_oracle_by_hand():
    """The naive oracle itself against an explicit double loop over all (a, b)."""
    query, sub_keys = make((3,), 2, 5, 4)
    scores, ids = product_key_topk(query, sub_keys, 4, backend="naive")
    for t in range(3):
        for h in range(2):
            every = torch.tensor([query[t, h, 0] @ sub_keys[h, 0, a] + query[t, h, 1] @ sub_keys[h, 1, b]
                                  for a in range(5) for b in range(5)], dtype=torch.float64)
            order = every.argsort(descending=True)[:4]
            assert torch.equal(ids[t, h], order)
            assert torch.allclose(scores[t, h], every[order])


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_gradients_match_brute_force(dtype, tol):
    query, sub_keys = make((4, 3), 2, 9, 5, dtype)
    grads = []
    for backend in ("naive", "torch"):
        q, kk = query.clone().requires_grad_(), sub_keys.clone().requires_grad_()
        scores, _ = product_key_topk(q, kk, 6, backend=backend)
        weight = torch.linspace(-1, 2, scores.numel(), dtype=dtype).reshape(scores.shape)
        grads.append(torch.autograd.grad((scores * weight).sum(), (q, kk)))
    for got, ref in zip(grads[1], grads[0]):
        assert ref.abs().sum() > 0
        assert rel_err(got, ref) < tol


def test_ties_return_the_exact_top_scores():
    """Integer data makes many exact ties: scores still equal brute force; ids are distinct and score right."""
    n, k = 6, 6
    query = torch.randint(-2, 3, (20, 2, 2, 3)).double()
    sub_keys = torch.randint(-2, 3, (2, 2, n, 3)).double()
    scores, ids = product_key_topk(query, sub_keys, k, backend="torch")
    ref_scores, _ = product_key_topk(query, sub_keys, k, backend="naive")
    assert torch.equal(scores, ref_scores)
    assert (ids.sort(-1).values.diff(dim=-1) > 0).all()
    full = (torch.einsum("thd,had->tha", query[:, :, 0], sub_keys[:, 0])[..., :, None]
            + torch.einsum("thd,hbd->thb", query[:, :, 1], sub_keys[:, 1])[..., None, :]).flatten(-2)
    assert torch.equal(full.gather(-1, ids), scores)


def test_bfloat16_scores_close_to_float64():
    query, sub_keys = make((16,), 2, 16, 8, torch.float64)
    scores, ids = product_key_topk(query.bfloat16(), sub_keys.bfloat16(), 4, backend="torch")
    assert scores.dtype == torch.float32
    ref_scores, _ = product_key_topk(query, sub_keys, 4, backend="naive")
    assert rel_err(scores, ref_scores) < 2e-2


@pytest.mark.parametrize("backend", ["torch", "naive"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_are_scored_in_float32(backend, dtype):
    """The scores of half-precision inputs are float32 sums of the exact products of those inputs (as the Triton
    kernels compute them), not products rounded to the input dtype before summing: the same experts as the float32
    scoring of the same (rounded) inputs, scores equal to float32 rounding."""
    torch.manual_seed(0)
    query, sub_keys = make((64,), 4, 32, 16, torch.float32)
    query, sub_keys = (4 * query).to(dtype), sub_keys.to(dtype)
    scores, ids = product_key_topk(query, sub_keys, 8, backend=backend)
    ref_scores, ref_ids = product_key_topk(query.double(), sub_keys.double(), 8, backend="naive")
    assert torch.equal(ids.sort(-1).values, ref_ids.sort(-1).values)
    assert rel_err(scores, ref_scores) < 1e-6


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an ATen op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_torch_path_never_scores_all_experts():
    tokens, H, n, dk, k = 64, 2, 256, 4, 8      # N = 65536 experts
    query = torch.randn(tokens, H, 2, dk, requires_grad=True)
    sub_keys = torch.randn(H, 2, n, dk, requires_grad=True)
    with _LargestTensor() as probe:
        scores, _ = product_key_topk(query, sub_keys, k, backend="torch")
        scores.sum().backward()
    assert probe.largest <= tokens * H * 2 * n < tokens * H * n * n


@pytest.mark.parametrize("kwargs,argument", [
    (dict(k=5), "k"),                                            # k > √N = 4
    (dict(k=0), "k"),
    (dict(query=torch.randn(3, 2, 3, 4)), "query.shape"),        # middle dim must be 2
    (dict(query=torch.randn(3, 3, 2, 4)), "query.shape"),        # H mismatch
    (dict(query=torch.randn(3, 2, 2, 5)), "query.shape"),        # dk mismatch
    (dict(sub_keys=torch.randn(2, 3, 4, 4)), "sub_keys.shape"),  # not two halves
    (dict(query=torch.randn(3, 2, 2, 4, dtype=torch.float64)), "sub_keys.dtype"),
    (dict(backend="cuda"), "backend"),
])
def test_bad_arguments_raise(kwargs, argument):
    args = dict(query=torch.randn(3, 2, 2, 4), sub_keys=torch.randn(2, 2, 4, 4), k=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=argument.replace(".", r"\.")):
        product_key_topk(**args)
