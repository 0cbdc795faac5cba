"""The ops' fast paths on a CUDA device against the float64 CPU oracles (skipped where there is no GPU).

Run on a GPU machine with ``python -m pytest tests/ops/test_ops_cuda.py``.
"""
import pytest
import torch

import wonderful_matrices as wm
from conftest import rel_err

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}  # float32 on GPU may use TF32 in einsums/SDPA


def _grads(fn, inputs):
    for t in inputs:
        t.grad = None
    out = fn(*inputs)
    gen = torch.Generator().manual_seed(1)  # the same upstream gradient for the oracle and the fast path
    weight = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device, out.dtype)
    (out * weight).sum().backward()
    return out.detach(), [t.grad.detach() for t in inputs]


def _leaf(t, dtype, device):
    return t.to(device=device, dtype=dtype).requires_grad_(True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("l,chunk,g", [(1000, 64, 1), (513, 128, 2), (2048, 256, 4)])
def test_ssd_cuda(dtype, l, chunk, g):
    b, h, p, n = 2, 8, 32, 64
    base = [torch.randn(b, l, h, p), torch.rand(b, l, h) * 0.1 + 0.01, torch.randn(b, l, g, n) / n ** 0.5,
            torch.randn(b, l, g, n) / n ** 0.5]
    A = -torch.rand(h) - 0.1
    D = torch.randn(h)

    def fn(x, dt, B, C):
        return wm.ops.ssd(x, dt, A.to(x.device, torch.float32 if x.device.type == "cuda" else x.dtype),
                          B, C, chunk_size=chunk, D=D.to(x.device, torch.float32 if x.device.type == "cuda" else x.dtype))

    ref, ref_g = _grads(fn, [_leaf(t, torch.float64, "cpu") for t in base])
    out, out_g = _grads(fn, [_leaf(t, dtype, "cuda") for t in base])
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out.cpu(), ref) < TOL[dtype]
    for a, r in zip(out_g, ref_g):
        assert rel_err(a.cpu(), r) < TOL[dtype] * 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window,lq,lk", [(None, 300, 300), (64, 300, 300), (100, 600, 600), (37, 200, 333)])
def test_dma_cuda(dtype, window, lq, lk):
    b, hq, hkv, d = 2, 8, 2, 64
    base = [torch.randn(b, lq, hq, d), torch.randn(b, lk, hkv, d), torch.randn(b, lk, hkv, d),
            torch.randn(b, lk, hkv) * 3]

    def fn(q, k, v, bias):
        backend = "naive" if q.device.type == "cpu" else "torch"
        return wm.ops.dynamic_mask_attention(q, k, v, bias, keep_window=window, backend=backend)

    small = [t[:1] for t in base]  # the oracle loops per query: keep it to one batch row
    ref, ref_g = _grads(fn, [_leaf(t, torch.float64, "cpu") for t in small])
    out, out_g = _grads(fn, [_leaf(t, dtype, "cuda") for t in small])
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out.cpu(), ref) < TOL[dtype]
    for a, r in zip(out_g, ref_g):
        assert rel_err(a.cpu(), r) < TOL[dtype] * 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_product_key_and_mixture_cuda(dtype):
    tokens, H, sqrt_n, dk, k, d = 512, 4, 64, 32, 8, 256
    query = torch.randn(tokens, H, 2, dk)
    sub_keys = torch.randn(H, 2, sqrt_n, dk)
    s_ref, i_ref = wm.ops.product_key_topk(query.double(), sub_keys.double(), k, backend="naive")
    s, i = wm.ops.product_key_topk(query.cuda(), sub_keys.cuda(), k)
    assert torch.equal(i.cpu(), i_ref)
    assert rel_err(s.cpu(), s_ref) < 1e-4

    x, down, up = torch.randn(tokens, d), torch.randn(sqrt_n ** 2, d) / d ** 0.5, torch.randn(sqrt_n ** 2, d)
    gates = torch.softmax(s_ref, -1).float()

    def fn(x, down, up, gates):
        return wm.ops.expert_mixture(x, i_ref.to(x.device), gates, down, up)

    ref, ref_g = _grads(fn, [_leaf(t, torch.float64, "cpu") for t in (x, down, up, gates)])
    out, out_g = _grads(fn, [_leaf(t, dtype, "cuda") for t in (x, down, up)] + [_leaf(gates, torch.float32, "cuda")])
    assert rel_err(out.cpu(), ref) < TOL[dtype]
    for a, r in zip(out_g, ref_g):
        assert rel_err(a.cpu(), r) < TOL[dtype] * 2
