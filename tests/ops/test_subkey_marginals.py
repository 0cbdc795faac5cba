"""ops.product_key.marginals.subkey_marginals (the balance loss's mean sub-key distribution) against its autograd
oracle: values and gradients in float64, float32 and bf16; under torch.compile it keeps nothing per token and sub-key
for the backward (the oracle keeps the float32 probabilities)."""
import pytest
import torch

from conftest import kept_for_backward, rel_err
from wonderful_matrices.layers.cdmoe import balance_loss_of_marginals, product_key_balance_loss
from wonderful_matrices.ops.product_key.marginals import subkey_marginals, subkey_marginals_naive


def inputs(shape=(3, 37), H=4, n=11, dk=6, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(*shape, H, 2, dk, generator=gen, dtype=torch.float64)
    keys = torch.randn(H, 2, n, dk, generator=gen, dtype=torch.float64)
    return query.to(dtype).requires_grad_(), keys.to(dtype).requires_grad_()


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_values_and_gradients_match_the_oracle(dtype, tol):
    query, keys = inputs(dtype=dtype)
    weights = torch.randn(4, 2, 11, dtype=torch.float64)
    out = subkey_marginals(query, keys)
    assert out.shape == (4, 2, 11) and out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    (out.double() * weights).sum().backward()
    q64, k64 = (t.detach().double().requires_grad_() for t in (query, keys))
    ref = subkey_marginals_naive(q64, k64)
    (ref * weights).sum().backward()
    assert rel_err(out, ref) < tol
    assert rel_err(query.grad, q64.grad) < 4 * tol and rel_err(keys.grad, k64.grad) < 4 * tol


def test_balance_loss_from_marginals_is_the_balance_loss():
    query, keys = inputs(dtype=torch.float64)
    ids = torch.randint(0, 121, (3, 37, 4, 5))
    half_scores = torch.einsum("...hcd,hcnd->...hcn", query, keys)
    direct = product_key_balance_loss(half_scores, ids)
    through = balance_loss_of_marginals(subkey_marginals(query, keys), ids)
    assert torch.allclose(direct, through, rtol=1e-12, atol=0)
    g_direct = torch.autograd.grad(direct, (query, keys))
    g_through = torch.autograd.grad(through, (query, keys))
    for a, b in zip(g_direct, g_through):
        assert rel_err(b, a) < 1e-12


def test_compiled_keeps_no_probabilities():
    """The oracle under the compiler keeps a (T, H, 2, n) float32 tensor (the softmax's output) for the backward;
    the operator keeps only its inputs."""
    T, H, n = 64, 4, 48

    def kept_sizes(fn):
        query, keys = inputs(shape=(T,), H=H, n=n, dtype=torch.float32)
        kept = kept_for_backward(lambda q, k: (fn(q, k) * torch.arange(H * 2 * n).view(H, 2, n)).sum(), query, keys)
        return [n.meta["val"].numel() for n in kept if "val" in n.meta]

    assert max(kept_sizes(subkey_marginals_naive)) >= T * H * 2 * n
    assert max(kept_sizes(subkey_marginals)) < T * H * 2 * n


def test_mismatched_dtypes_raise():
    query, keys = inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match="sub_keys.dtype"):
        subkey_marginals(query, keys.double())


def test_operator_registration_checks():
    """The custom operator's fake (what the compiler plans with), autograd registration and schema agree with the
    real one (torch.library.opcheck)."""
    for shape, H, n, dk in [((29,), 4, 11, 6), ((32,), 2, 4, 8), ((5,), 1, 3, 2)]:
        query, keys = inputs(shape=shape, H=H, n=n, dk=dk, dtype=torch.float32)
        torch.library.opcheck(torch.ops.wonderful_matrices.subkey_marginals, (query, keys))
        grad = torch.randn(H, 2, n)
        backward = torch.ops.wonderful_matrices.subkey_marginals_backward
        torch.library.opcheck(backward, (grad, query.detach(), keys.detach()))
        # contiguous like the fake: the layer views the query's gradient as the linear's (T, H·2·dk) output
        assert all(g.is_contiguous() for g in backward(grad, query.detach(), keys.detach()))
