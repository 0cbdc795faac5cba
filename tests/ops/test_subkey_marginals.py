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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_cuda_matches_the_oracle_eager_and_compiled(dtype, tol):
    """On the GPU, eager and compiled (Inductor), at cheems-base's routing shape, against the float64 oracle."""
    query, keys = inputs(shape=(2, 1000), H=4, n=48, dk=64, dtype=dtype)
    query, keys = (t.detach().cuda().requires_grad_() for t in (query, keys))
    weights = torch.randn(4, 2, 48, dtype=torch.float64, device="cuda")
    q64, k64 = (t.detach().double().requires_grad_() for t in (query, keys))
    ref = subkey_marginals_naive(q64, k64)
    (ref * weights).sum().backward()
    for fn in (subkey_marginals, torch.compile(subkey_marginals, fullgraph=True)):
        query.grad = keys.grad = None
        out = fn(query, keys)
        (out.double() * weights).sum().backward()
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
    the checkpointed function keeps only its inputs, with and without autocast."""
    T, H, n = 64, 4, 48

    def kept_sizes(fn, autocast_dtype):
        query, keys = inputs(shape=(T,), H=H, n=n, dtype=torch.float32)
        kept = kept_for_backward(lambda q, k: (fn(q, k) * torch.arange(H * 2 * n).view(H, 2, n)).sum(), query, keys,
                                 autocast_dtype=autocast_dtype)
        return [n.meta["val"].numel() for n in kept if "val" in n.meta]

    for autocast_dtype in (None, torch.bfloat16):
        assert max(kept_sizes(subkey_marginals_naive, autocast_dtype)) >= T * H * 2 * n
        assert max(kept_sizes(subkey_marginals, autocast_dtype)) < T * H * 2 * n


def test_eager_keeps_no_probabilities():
    """In eager mode too, the saved tensors of the graph are the inputs alone (the oracle saves the probabilities)."""
    T, H, n = 64, 4, 48

    def saved_sizes(fn):
        query, keys = inputs(shape=(T,), H=H, n=n, dtype=torch.float32)
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            fn(query, keys).sum().backward()
        return sizes

    assert max(saved_sizes(subkey_marginals_naive)) >= T * H * 2 * n
    assert max(saved_sizes(subkey_marginals)) < T * H * 2 * n


def test_mismatched_dtypes_raise():
    query, keys = inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match="sub_keys.dtype"):
        subkey_marginals(query, keys.double())
