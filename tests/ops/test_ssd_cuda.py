"""SSD's fast paths (Triton and torch backends, packed documents) on a CUDA device against the float64 oracles.

Skipped where there is no CUDA device. On a GPU machine: ``AREA=ssd OUT=DIR bash scripts/gpu_check.sh`` (or
``python -m pytest tests/ops/test_ssd_cuda.py``).
"""
import pytest
import torch

import wonderful_matrices as wm
from conftest import rel_err
from cuda_helpers import TOL, _grads, _leaf, fingerprint, grouped, memoized, needs_cuda

pytestmark = needs_cuda


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("l,chunk,g", grouped("ssd", [(1000, 64, 1), (513, 128, 2), (2048, 256, 4)]))
def test_ssd_cuda(dtype, l, chunk, g):
    b, h, p, n = 2, 8, 32, 64
    base = [torch.randn(b, l, h, p), torch.rand(b, l, h) * 0.1 + 0.01, torch.randn(b, l, g, n) / n ** 0.5,
            torch.randn(b, l, g, n) / n ** 0.5]
    A = -torch.rand(h) - 0.1
    D = torch.randn(h)

    def fn(x, dt, B, C):
        param_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        backend = "naive" if x.dtype == torch.float64 else "auto"
        return wm.ops.ssd(x, dt, A.to(x.device, param_dtype), B, C, chunk_size=chunk,
                          D=D.to(x.device, param_dtype), backend=backend)

    # the float64 oracle runs on the GPU too (a CPU oracle at these lengths is slow on the test host), once for
    # both dtypes (the same inputs)
    ref, ref_g = memoized(("ssd", chunk, fingerprint(*base, A, D)),
                          lambda: _grads(fn, [_leaf(t, torch.float64, "cuda") for t in base]))
    out, out_g = _grads(fn, [_leaf(t, dtype, "cuda") for t in base])
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out.cpu(), ref) < TOL[dtype]
    for a, r in zip(out_g, ref_g):
        assert rel_err(a.cpu(), r) < TOL[dtype] * 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("l,chunk,h,g,p,n,with_init", grouped("ssd-grad", [
    (1000, 64, 8, 1, 32, 64, True), (513, 128, 6, 2, 24, 40, False), (2048, 256, 16, 1, 64, 128, True),
    (1, 256, 4, 4, 16, 16, True), (1000, 256, 6, 1, 128, 128, True)]))  # the last: cheems-base's head shape
def test_ssd_all_gradients_cuda(dtype, backend, l, chunk, h, g, p, n, with_init):
    """Every input's gradient (x, dt, A, B, C, D, initial_state) and the final state against the float64 oracle."""
    if dtype == torch.float16 and backend == "torch":
        pytest.skip("the torch backend's half path is covered by the bfloat16 case")
    b = 2
    gen = torch.Generator().manual_seed(l + h)
    base = {"x": torch.randn(b, l, h, p, generator=gen), "dt": torch.rand(b, l, h, generator=gen) * 0.1 + 0.01,
            "A": -torch.rand(h, generator=gen) - 0.1, "B": torch.randn(b, l, g, n, generator=gen) / n ** 0.5,
            "C": torch.randn(b, l, g, n, generator=gen) / n ** 0.5, "D": torch.randn(h, generator=gen),
            "initial_state": torch.randn(b, h, p, n, generator=gen) if with_init else None}
    gy = torch.randn(b, l, h, p, generator=gen, dtype=torch.float64)
    gs = torch.randn(b, h, p, n, generator=gen, dtype=torch.float64)

    def run(inputs, name):
        leaves = {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in inputs.items()}
        y, final = wm.ops.ssd(**leaves, chunk_size=chunk, return_final_state=True, backend=name)
        ((y.double() * gy.to(y.device)).sum() + (final.double() * gs.to(y.device)).sum()).backward()
        return y.detach(), final.detach(), {k: v.grad for k, v in leaves.items() if v is not None}

    # the float64 oracle on the GPU, once for the case's five dtype / backend runs (the same inputs)
    ref = memoized(("ssd-grad", chunk, fingerprint(*base.values(), gy, gs)),
                   lambda: run({k: (v.double().cuda() if v is not None else None) for k, v in base.items()}, "naive"))
    half = ("x", "B", "C")  # model activations in the low precision; dt, A, D, state in float32
    inputs = {k: (v.to("cuda", dtype if k in half else torch.float32) if v is not None else None)
              for k, v in base.items()}
    y, final, grads = run(inputs, backend)
    tol = 3e-5 if (dtype == torch.float32 and backend == "triton") else TOL.get(dtype, 2e-2)  # exact fp32 dots
    assert y.dtype == dtype and final.dtype == torch.float32
    assert torch.isfinite(y).all() and torch.isfinite(final).all()
    assert rel_err(y.cpu(), ref[0]) < tol
    assert rel_err(final.cpu(), ref[1]) < tol
    assert set(grads) == set(ref[2])
    for k, r in ref[2].items():
        assert grads[k].dtype == inputs[k].dtype, k
        assert rel_err(grads[k].cpu(), r) < 2 * tol, k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("l,chunk,h,g,p,n,with_init", grouped("ssd-grad", [
    (2048, 256, 16, 1, 64, 128, True), (1000, 256, 6, 1, 128, 128, True)]))
def test_ssd_all_gradients_cuda_dcb_tile_32(monkeypatch, dtype, l, chunk, h, g, p, n, with_init):
    """:func:`test_ssd_all_gradients_cuda` (triton) with the dcb kernel on 32-row tiles (``DCB_TILE``; the default
    is decided by ``scripts/gpu_ssd.py dcb_ab``)."""
    from wonderful_matrices.ops.ssd import chunked_kernels

    monkeypatch.setattr(chunked_kernels, "DCB_TILE", 32)
    test_ssd_all_gradients_cuda(dtype, "triton", l, chunk, h, g, p, n, with_init)


# packed documents: starts at chunk edges (256, 512) and inside chunks, one-token documents, a one-document row
SSD_PACKED_CUDA = [
    (8, 32, 1, 64, 256, True, True, [[256, 1, 255, 100, 1, 411], [1024]]),
    (6, 24, 2, 40, 128, True, False, [[5, 123, 1, 300, 84]]),
    (4, 64, 1, 128, 64, False, True, [[64, 64, 1, 1, 62, 200, 121]]),
    (6, 128, 1, 128, 256, True, True, [[300, 1, 211, 512]]),  # cheems-base's head shape (p = 128)
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("case", SSD_PACKED_CUDA, ids=["chunk256", "chunk128", "chunk64", "p128"])
def test_ssd_packed_cuda(case, backend, dtype):
    """SSD with seq_idx on the GPU: a packed row equals its documents run alone (float64 on the CPU), forward and
    every gradient."""
    from test_ssd_packed import check_packed

    check_packed(backend, case, dtype=dtype, tol=TOL[dtype], device="cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rope,h,p,n,g", [("fixed", 6, 128, 128, 1), ("fixed", 3, 20, 10, 1), ("data", 4, 64, 32, 2),
                                          ("none", 3, 5, 7, 3)])
def test_fused_decode_step_cuda(dtype, rope, h, p, n, g):
    """The compiled fused SSD decoding step (SSDMixer's one-token path on CUDA) against the float64 torch path."""
    from ssd_decode_cases import decode_pair

    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 1e-2}[dtype]
    for t, (y, y_o, state, state_o) in enumerate(decode_pair(rope, h, p, n, g, dtype=dtype, device="cuda")):
        assert y.dtype == dtype and torch.isfinite(y).all()
        assert rel_err(y.cpu(), y_o.cpu()) < tol, t
        assert rel_err(state["ssm_state"].cpu(), state_o["ssm_state"].cpu()) < tol, t


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ssd_silu_activation_cuda(dtype):
    """``x_activation="silu"`` on the Triton backend (SiLU recomputed in the backward) against the float64 oracle of
    SSD over ``silu(x)``: output and every gradient, at cheems-base's head shape."""
    b, l, h, p, g, n = 2, 700, 6, 128, 1, 128
    gen = torch.Generator().manual_seed(11)
    base = [torch.randn(b, l, h, p, generator=gen), torch.rand(b, l, h, generator=gen) * 0.1 + 0.01,
            torch.randn(b, l, g, n, generator=gen) / n ** 0.5, torch.randn(b, l, g, n, generator=gen) / n ** 0.5]
    A, D = -torch.rand(h, generator=gen) - 0.1, torch.randn(h, generator=gen)

    def fn(x, dt, B, C):
        if x.dtype == torch.float64:
            return wm.ops.ssd(torch.nn.functional.silu(x), dt, A.to(x.device, x.dtype), B, C, chunk_size=256,
                              D=D.to(x.device, x.dtype), backend="naive")
        return wm.ops.ssd(x, dt, A.to(x.device), B, C, chunk_size=256, D=D.to(x.device), backend="triton",
                          x_activation="silu")

    ref, ref_g = _grads(fn, [_leaf(t, torch.float64, "cuda") for t in base])
    out, out_g = _grads(fn, [_leaf(t, dtype, "cuda") for t in base])
    assert out.dtype == dtype and rel_err(out.cpu(), ref.cpu()) < TOL[dtype]
    for name, a, r in zip(("x", "dt", "B", "C"), out_g, ref_g):
        assert rel_err(a.cpu(), r.cpu()) < TOL[dtype] * 2, name
