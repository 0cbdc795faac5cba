"""What the CUDA parity tests share (tests/ops/test_*_cuda.py, tests/models/test_models_cuda.py): the skip mark,
the tolerances, running a function's forward and backward on leaf tensors, and a per-process memo of the float64
references that several parametrizations share (scripts/gpu_check.sh runs the files with ``--dist loadgroup``, so
the tests of one ``xdist_group`` run in one process and compute their reference once)."""
import hashlib

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


def fingerprint(*values) -> tuple:
    """A hashable digest of ``values`` (tensors by shape, dtype and bytes; anything else as it is): two calls
    with the same inputs give equal fingerprints, so a memoized reference is reused only for identical inputs."""
    out = []
    for v in values:
        if isinstance(v, torch.Tensor):
            raw = v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            v = (tuple(v.shape), str(v.dtype), hashlib.sha1(raw).hexdigest())
        out.append(v)
    return tuple(out)


_MEMO: dict = {}
_MEMO_SIZE = 6  # references of the last few cases; an xdist group runs its tests one after the other


def memoized(key: tuple, compute):
    """``compute()`` (tensors, or lists / tuples / dicts of them), moved to the CPU and kept for later calls with an
    equal ``key`` in this process -> the kept result. ``key`` must name the computation and hold
    :func:`fingerprint` of its inputs; callers only read the result."""
    if key not in _MEMO:
        if len(_MEMO) >= _MEMO_SIZE:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = _to_cpu(compute())
    return _MEMO[key]


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


def grouped(name: str, cases: list) -> list:
    """``cases`` (tuples of parameter values, or single values) as ``pytest.param`` each in its own xdist group
    ``name-<values>``: the other parametrizations of a case (dtypes, backends) run in the same worker under
    ``--dist loadgroup`` and share the case's memoized reference; a plain mark without xdist."""
    cases = [c if isinstance(c, tuple) else (c,) for c in cases]
    return [pytest.param(*c, marks=pytest.mark.xdist_group(name=f"{name}-{'-'.join(map(str, c))}")) for c in cases]
