"""What the CUDA parity tests share (tests/ops/test_*_cuda.py, tests/models/test_models_cuda.py): the skip mark,
the tolerances, and running a function's forward and backward on leaf tensors."""
import pytest
import torch

from conftest import rel_err

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}  # float32 on GPU may use TF32 in einsums/SDPA


def _grads(fn, inputs):
    for t in inputs:
        t.grad = None
    out = fn(*inputs)
    gen = torch.Generator().manual_seed(1)  # the same upstream gradient for the oracle and the fast path
    weight = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.device, out.dtype)
    (out * weight).sum().backward()
    return out.detach(), [t.grad.detach() for t in inputs]


def _grad_close(grad, ref, tol) -> bool:
    """Relative error below ``tol``; a reference that is exactly zero (e.g. q/k gradients with keep_window=1,
    where each query attends one key) needs the gradient's RMS below ``tol`` instead."""
    grad = grad.detach().cpu().double()
    if ref.norm() == 0:
        return bool(torch.isfinite(grad).all()) and (grad.norm() / grad.numel() ** 0.5).item() < tol
    return rel_err(grad, ref) < tol


def _on_cpu(result):
    out, grads = result
    return out.cpu(), [g.cpu() for g in grads]


def _leaf(t, dtype, device):
    return t.detach().to(device=device, dtype=dtype).requires_grad_(True)  # a new leaf, even where .to() is a no-op
