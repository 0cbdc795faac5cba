"""The fused RMSNorm (+ residual), gated RMSNorm and chunked linear + cross-entropy on a CUDA device against the
float64 formulas, and the Triton RMSNorm under torch.compile.

Skipped where there is no CUDA device. On a GPU machine: ``AREA=norm OUT=DIR bash scripts/gpu_check.sh`` (or
``python -m pytest tests/ops/test_norm_loss_cuda.py``).
"""
import pytest
import torch

import wonderful_matrices as wm
from conftest import rel_err
from cuda_helpers import TOL, _grads, _leaf, _on_cpu, needs_cuda

pytestmark = needs_cuda


@pytest.mark.parametrize("x_dtype,res_dtype,w_dtype", [
    (torch.float32, torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float16, torch.float32), (torch.bfloat16, torch.float32, torch.float32),  # autocast's mix
    (torch.bfloat16, None, torch.float32), (torch.float32, None, torch.float32)])
@pytest.mark.parametrize("rows,d", [(8 * 513 + 3, 768), (1000, 4096), (37, 100), (5, 64)])
def test_rms_norm_triton_cuda(x_dtype, res_dtype, w_dtype, rows, d):
    """The fused RMSNorm (+ residual add) kernels against the float64 formula: y, the residual sum, and the
    gradients of x, weight and residual (the sum's own upstream gradient included)."""
    gen = torch.Generator().manual_seed(rows + d)
    base = [torch.randn(rows, d, generator=gen) * 2, torch.randn(d, generator=gen)]
    if res_dtype is not None:
        base.append(torch.randn(rows, d, generator=gen))
    ws = torch.randn(rows, d, generator=gen, dtype=torch.float64)

    def fn(x, w, res=None):
        backend = "torch" if x.dtype == torch.float64 else "triton"
        if res is None:
            return wm.ops.rms_norm(x, w, 1e-6, backend=backend)
        y, s = wm.ops.rms_norm(x, w, 1e-6, residual=res, backend=backend)
        return y + (s.double() * ws.to(s.device)).to(y.dtype)  # both outputs carry gradient

    dtypes = [x_dtype, w_dtype] + ([res_dtype] if res_dtype is not None else [])
    ref, ref_g = _on_cpu(_grads(fn, [_leaf(t, torch.float64, "cuda") for t in base]))
    out, out_g = _grads(fn, [_leaf(t, dt, "cuda") for t, dt in zip(base, dtypes)])
    low = min(dtypes, key=lambda dt: torch.finfo(dt).bits)
    tol = TOL.get(low, 2e-2)
    assert torch.isfinite(out).all() and rel_err(out.cpu(), ref) < tol
    for name, a, r, dt in zip(("x", "weight", "residual"), out_g, ref_g, dtypes):
        assert a.dtype == dt, name
        assert rel_err(a.cpu(), r) < tol * 2, name


@pytest.mark.parametrize("x_dtype,z_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                               (torch.float32, torch.bfloat16), (torch.float16, torch.float16)])
@pytest.mark.parametrize("rows,d,groups", [(8 * 513 + 3, 768, 1), (1000, 1536, 8), (37, 96, 2)])
def test_gated_rms_norm_triton_cuda(x_dtype, z_dtype, rows, d, groups):
    """Mamba2's gated RMSNorm kernels against the float64 formula: y and the gradients of x, gate and weight."""
    gen = torch.Generator().manual_seed(rows + d + groups)
    base = [torch.randn(rows, d, generator=gen) * 2, torch.randn(rows, d, generator=gen) * 2,
            torch.randn(d, generator=gen)]

    def fn(x, z, w):
        backend = "torch" if x.dtype == torch.float64 else "triton"
        return wm.ops.gated_rms_norm(x, z, w, 1e-5, num_groups=groups, backend=backend)

    ref, ref_g = _on_cpu(_grads(fn, [_leaf(t, torch.float64, "cuda") for t in base]))
    out, out_g = _grads(fn, [_leaf(t, dt, "cuda") for t, dt in zip(base, (x_dtype, z_dtype, torch.float32))])
    tol = TOL[torch.bfloat16] if torch.float32 != x_dtype or torch.float32 != z_dtype else TOL[torch.float32]
    assert torch.isfinite(out).all() and rel_err(out.cpu(), ref) < tol
    for name, a, r in zip(("x", "gate", "weight"), out_g, ref_g):
        assert rel_err(a.cpu(), r) < tol * 2, name


@pytest.mark.parametrize("gated", [False, True])
def test_norm_out_dtype_cuda(gated):
    """``out_dtype=bfloat16`` from float32 inputs (what the blocks ask under bf16 autocast): the kernels' output is
    the torch path's float32 value rounded once (equal but for the rare last-bit tie of a differently rounded
    float32 value), and the gradients, given the same bf16 output gradient, match the torch path's."""
    gen = torch.Generator().manual_seed(7)
    base = [torch.randn(4099, 768, generator=gen) * 2, torch.randn(4099, 768, generator=gen),
            torch.randn(768, generator=gen)]
    grad_y = torch.randn(4099, 768, generator=gen).to("cuda", torch.bfloat16)

    def run(backend):
        x, other, w = (t.to("cuda").requires_grad_(True) for t in base)
        if gated:
            y = wm.ops.gated_rms_norm(x, other, w, 1e-5, num_groups=2, backend=backend, out_dtype=torch.bfloat16)
        else:
            y, _ = wm.ops.rms_norm(x, w, 1e-6, residual=other, backend=backend, out_dtype=torch.bfloat16)
        y.backward(grad_y)
        return y, [t.grad for t in (x, other, w)]

    y, grads = run("triton")
    ref, ref_grads = run("torch")
    assert y.dtype == torch.bfloat16 and (y == ref).float().mean() > 0.999 and rel_err(y, ref) < 1e-2
    for name, a, r in zip(("x", "gate" if gated else "residual", "weight"), grads, ref_grads):
        assert a.dtype == torch.float32 and rel_err(a, r) < 1e-4, name


@pytest.mark.parametrize("bias", [False, True])
def test_gated_norm_linear_cuda(bias):
    """``gated_rms_norm_linear`` under bf16 autocast with the norm storing bf16 (the SSD layer's training call): its
    autograd function (the norm's output recomputed in the backward) against the composition of the Triton norm and
    ``F.linear`` — output and every gradient."""
    gen = torch.Generator().manual_seed(9)
    base = [torch.randn(4099, 1536, generator=gen), torch.randn(4099, 1536, generator=gen),
            torch.randn(1536, generator=gen), torch.randn(768, 1536, generator=gen) * 0.03,
            torch.randn(768, generator=gen) if bias else None]
    grad_out = torch.randn(4099, 768, generator=gen).to("cuda", torch.bfloat16)

    def run(fused):
        x, z, w, lw, lb = (None if t is None else t.to("cuda").requires_grad_(True) for t in base)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if fused:
                out = wm.ops.gated_rms_norm_linear(x, z, w, lw, lb, 1e-5, num_groups=2, out_dtype=torch.bfloat16)
            else:
                out = torch.nn.functional.linear(
                    wm.ops.gated_rms_norm(x, z, w, 1e-5, num_groups=2, out_dtype=torch.bfloat16), lw, lb)
        out.backward(grad_out)
        return out, [None if t is None else t.grad for t in (x, z, w, lw, lb)]

    out, grads = run(True)
    ref, ref_grads = run(False)
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) < 1e-2
    for name, a, r in zip(("x", "gate", "weight", "linear_weight", "linear_bias"), grads, ref_grads):
        assert (a is None and r is None) or (a.dtype == r.dtype and rel_err(a, r) < 1e-2), name


def test_rms_norm_triton_compiles_without_graph_breaks():
    """torch.compile traces the Triton RMSNorm (forward and backward) as one graph, and it agrees with eager."""
    import torch._dynamo

    x = torch.randn(64, 768, device="cuda", requires_grad=True)
    res = torch.randn(64, 768, device="cuda", requires_grad=True)
    w = torch.randn(768, device="cuda", requires_grad=True)

    def fn(x, res, w):
        y, s = wm.ops.rms_norm(x, w, 1e-6, residual=res, backend="triton")
        return (y * s).sum()

    torch._dynamo.reset()
    try:
        assert torch._dynamo.explain(fn)(x, res, w).graph_break_count == 0
        compiled = torch.compile(fn, fullgraph=True)
        got = torch.autograd.grad(compiled(x, res, w), (x, res, w))
        want = torch.autograd.grad(fn(x, res, w), (x, res, w))
        for a, b in zip(got, want):
            assert rel_err(a, b) < 1e-5
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("n,d,vocab,chunk", [(4099, 768, 32768, None), (1000, 256, 4099, 300)])
def test_linear_cross_entropy_bf16_autocast_cuda(n, d, vocab, chunk):
    """The chunked LM-head loss under bf16 autocast: equal to the unfused bf16 path (same bf16 logits, float32
    softmax) and within bf16 error of the float64 loss and gradients."""
    gen = torch.Generator().manual_seed(n)
    hidden = torch.randn(n, d, generator=gen)
    weight = torch.randn(vocab, d, generator=gen) / d ** 0.5
    targets = torch.randint(0, vocab, (n,), generator=gen)
    targets[::7] = -100
    targets = targets.cuda()

    def run(fn, dtype, autocast, **kwargs):
        h, w = _leaf(hidden, dtype, "cuda"), _leaf(weight, dtype, "cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = fn(h, w, targets, **kwargs)
        (loss * 1.5).backward()
        return [loss.detach().cpu(), h.grad.cpu(), w.grad.cpu()]

    exact = run(lambda h, w, t: wm.ops.linear_cross_entropy(h, w, t, backend="naive"), torch.float64, False)
    unfused = run(lambda h, w, t: wm.ops.linear_cross_entropy(h, w, t, backend="naive"), torch.float32, True)
    fused = run(wm.ops.linear_cross_entropy, torch.float32, True, chunk_size=chunk)
    assert rel_err(fused[0], unfused[0]) < 1e-5
    for name, a, r, u in zip(("loss", "hidden", "weight"), fused, exact, unfused):
        assert a.dtype == torch.float32 and torch.isfinite(a).all(), name
        assert rel_err(a, r) < 2e-2 and rel_err(a, r) < 2 * rel_err(u, r) + 1e-4, name
