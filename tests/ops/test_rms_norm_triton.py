"""The Triton RMSNorm (+ residual add) against the float64 oracle, on the CPU under TRITON_INTERPRET=1 (float32,
small shapes). The same kernels run compiled on a GPU in test_norm_loss_cuda.py (bfloat16/float16 there).

As in test_dma_triton.py, ``test_interpreted_in_a_subprocess`` reruns this file with the interpreter on.
"""
import pytest
import torch

from conftest import interpreted_only, interpreter_child_test, rel_err

pytest.importorskip("triton")

from wonderful_matrices.ops import gated_rms_norm, rms_norm
from wonderful_matrices.ops.rms_norm import fused_kernels
from wonderful_matrices.ops.rms_norm.naive import gated_rms_norm_naive, rms_norm_naive

test_interpreted_in_a_subprocess = interpreter_child_test(__file__)


def check(shape, with_residual, use_sum=True, use_y=True, eps=1e-6):
    x = torch.randn(shape) * 3
    weight = torch.randn(shape[-1])
    residual = torch.randn(shape) if with_residual else None
    gen = torch.Generator().manual_seed(1)
    wy, ws = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2))

    def run(fn, tensors):
        leaves = [t.clone().requires_grad_(True) for t in tensors if t is not None]
        args = leaves + [None] * (3 - len(leaves))
        y, s = fn(args[0], args[1], eps, args[2])
        loss = (y.double() * wy).sum() * use_y + ((s.double() * ws).sum() if with_residual and use_sum else 0)
        loss.backward()
        return y, s, [t.grad for t in leaves]

    y, s, grads = run(fused_kernels.rms_norm_triton, (x, weight, residual))
    ref_y, ref_s, ref_grads = run(rms_norm_naive, [None if t is None else t.double() for t in (x, weight, residual)])
    assert y.dtype == torch.float32 and not torch.isnan(y).any()
    assert rel_err(y, ref_y) < 1e-5 and rel_err(s, ref_s) < 1e-6
    for name, a, r in zip(("x", "weight", "residual"), grads, ref_grads):
        assert a.dtype == torch.float32 and rel_err(a, r) < 1e-5, name


# odd row counts (masked tail of a row block), widths that are not powers of two, a width of 3, several
# backward programs' worth of rows
SHAPES = [(7, 37), (2, 5, 64), (3, 3), (1, 100), (130, 24)]


@interpreted_only
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("with_residual", [False, True])
def test_triton_matches_oracle(shape, with_residual):
    check(shape, with_residual)


@interpreted_only
def test_sum_or_output_unused():
    check((9, 40), True, use_sum=False)   # the new residual stream gets no gradient
    check((9, 40), True, use_y=False, eps=0.1)


@interpreted_only
def test_dispatch_and_mixed_dtypes():
    x, w = torch.randn(5, 33), torch.randn(33)
    res = torch.randn(5, 33, dtype=torch.float64)
    y, s = rms_norm(x, w, 1e-5, residual=res, backend="triton")  # float64: the torch path
    ref_y, ref_s = rms_norm_naive(x, w, 1e-5, res)
    assert s.dtype == torch.float64 and torch.equal(s, ref_s) and torch.equal(y, ref_y)
    y = rms_norm(x, w, 1e-5, backend="triton")
    assert rel_err(y, rms_norm_naive(x.double(), w.double(), 1e-5)[0]) < 1e-5
    empty = rms_norm(torch.randn(0, 8, requires_grad=True), torch.randn(8, requires_grad=True), backend="triton")
    empty.sum().backward()
    assert empty.shape == (0, 8)


# (shape, groups): one group, groups of odd width, a row count that is not a multiple of the row block, eight
# groups (a row block of eight rows)
GATED = [((7, 37), 1), ((2, 5, 48), 2), ((11, 24), 4), ((3, 64), 8)]


@interpreted_only
@pytest.mark.parametrize("shape,groups", GATED, ids=str)
def test_gated_triton_matches_oracle(shape, groups):
    x, z = torch.randn(shape) * 2, torch.randn(shape) * 2
    weight = torch.randn(shape[-1])
    upstream = torch.randn(shape, dtype=torch.float64)

    def run(fn, tensors):
        leaves = [t.clone().requires_grad_(True) for t in tensors]
        y = fn(*leaves, 1e-5, groups)
        (y.double() * upstream).sum().backward()
        return y, [t.grad for t in leaves]

    y, grads = run(fused_kernels.gated_rms_norm_triton, (x, z, weight))
    ref, ref_grads = run(gated_rms_norm_naive, (x.double(), z.double(), weight.double()))
    assert y.dtype == torch.float32 and rel_err(y, ref) < 1e-5
    for name, a, r in zip(("x", "gate", "weight"), grads, ref_grads):
        assert a.dtype == torch.float32 and rel_err(a, r) < 1e-5, name


@interpreted_only
def test_gated_dispatch():
    x, z, w = torch.randn(5, 24), torch.randn(5, 24), torch.randn(24)
    for groups in (1, 2, 3):  # 3 groups: not a power of two, the torch path
        out = gated_rms_norm(x, z, w, 1e-6, num_groups=groups, backend="triton")
        assert rel_err(out, gated_rms_norm_naive(x.double(), z.double(), w.double(), 1e-6, groups)) < 1e-5


@interpreted_only
@pytest.mark.parametrize("shape", SHAPES + [(3, 1, 40)], ids=str)
@pytest.mark.parametrize("with_residual", [False, True])
def test_inference_path_matches_oracle(shape, with_residual):
    """Without autograd the kernel runs on the tensors as given (no reshapes, no saved 1/rms)."""
    x, weight = torch.randn(shape) * 3, torch.randn(shape[-1])
    residual = torch.randn(shape) if with_residual else None
    with torch.no_grad():
        y, s = fused_kernels.rms_norm_triton(x, weight, 1e-6, residual)
    ref_y, ref_s = rms_norm_naive(x.double(), weight.double(), 1e-6, None if residual is None else residual.double())
    assert y.shape == shape and s.shape == shape and y.dtype == torch.float32
    assert rel_err(y, ref_y) < 1e-5 and rel_err(s, ref_s) < 1e-6
    if not with_residual:
        assert s is x


@interpreted_only
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_gated_inference_path_on_column_slices(groups):
    """A decoding step's gate is a column range of the input projection (rows a wider stride apart), and a
    (b, 1, d) view: the no-grad kernel reads them in place."""
    b, d, width = 3, 48, 131
    proj = torch.randn(b, 1, width) * 2
    x, z = torch.randn(b, d) * 2, proj[:, :, 7:7 + d]
    weight = torch.randn(d)
    ref = gated_rms_norm_naive(x.double(), z[:, 0].double(), weight.double(), 1e-5, groups)
    with torch.no_grad():
        y = fused_kernels.gated_rms_norm_triton(x, z[:, 0], weight, 1e-5, groups)
        y3 = fused_kernels.gated_rms_norm_triton(x[:, None], z, weight, 1e-5, groups)
    assert y.shape == (b, d) and y3.shape == (b, 1, d)
    assert rel_err(y, ref) < 1e-5 and rel_err(y3[:, 0], ref) < 1e-5
    transposed = torch.randn(d, b).t()  # a last dim that is not contiguous: the general path
    with torch.no_grad():
        out = fused_kernels.gated_rms_norm_triton(transposed, transposed, weight, 1e-5, groups)
    assert rel_err(out, gated_rms_norm_naive(transposed.double(), transposed.double(), weight.double(), 1e-5,
                                             groups)) < 1e-5


@interpreted_only
@pytest.mark.parametrize("norm", ["plain", "residual", "gated"])
@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "inference"])
def test_out_dtype_rounds_once(norm, grad):
    """``out_dtype`` (here float16 from float32 inputs, what bf16 autocast asks on a GPU) is the kernel's store
    dtype: the oracle's float32 value rounded once, and the gradients those of the oracle given the same float16
    output gradient (the gated norm with two groups)."""
    x, other, weight = torch.randn(9, 40) * 3, torch.randn(9, 40), torch.randn(40)
    grad_y = torch.randn(9, 40).half()

    def run(plain_fn, gated_fn):
        leaves = [t.clone().requires_grad_(grad) for t in (x, other, weight)]
        if norm == "gated":
            y = gated_fn(*leaves, 1e-6, 2, torch.float16)
        else:
            residual = leaves[1] if norm == "residual" else None
            y, _ = plain_fn(leaves[0], leaves[2], 1e-6, residual, torch.float16)
        if grad:
            y.backward(grad_y)
        return y, [t.grad for t in leaves]

    y, grads = run(fused_kernels.rms_norm_triton, fused_kernels.gated_rms_norm_triton)
    ref_y, ref_grads = run(rms_norm_naive, gated_rms_norm_naive)
    assert y.dtype == torch.float16 and torch.equal(y, ref_y)
    for name, a, r in zip(("x", "residual or gate", "weight"), grads, ref_grads):
        assert (a is None and r is None) or rel_err(a, r) < 1e-5, name


@interpreted_only
@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "autocast-fp16"])
@pytest.mark.parametrize("bias", [False, True])
def test_gated_norm_linear_recomputes_the_norm_output(autocast, bias):
    """``gated_rms_norm_linear`` on the Triton backend (its own autograd function) gives the composition's output and
    gradients (float32; under fp16 autocast the norm storing fp16, as the SSD layer asks), and keeps no copy of the
    norm's output for the backward."""
    from wonderful_matrices.ops import gated_rms_norm_linear

    gen = torch.Generator().manual_seed(5)
    tensors = [torch.randn(3, 7, 48, generator=gen), torch.randn(3, 7, 48, generator=gen),
               torch.randn(48, generator=gen), torch.randn(24, 48, generator=gen) * 0.2,
               torch.randn(24, generator=gen) if bias else None]
    grad_out = torch.randn(3, 7, 24, generator=gen)
    out_dtype = torch.float16 if autocast else None

    def run(backend):
        leaves = [None if t is None else t.clone().requires_grad_(True) for t in tensors]
        saved = []
        with torch.autocast("cpu", dtype=torch.float16, enabled=autocast), \
                torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = gated_rms_norm_linear(*leaves[:3], leaves[3], leaves[4], 1e-5, num_groups=2, backend=backend,
                                        out_dtype=out_dtype)
        out.backward(grad_out.to(out.dtype))
        return out, [None if t is None else t.grad for t in leaves], saved

    out, grads, saved = run("triton")
    ref, ref_grads, _ = run("torch")
    assert out.dtype == ref.dtype == (torch.float16 if autocast else torch.float32)
    tol = 2e-3 if autocast else 1e-5
    assert rel_err(out, ref) < tol
    for name, a, r in zip(("x", "gate", "weight", "linear_weight", "linear_bias"), grads, ref_grads):
        assert (a is None and r is None) or (a.dtype == r.dtype and rel_err(a, r) < tol), name
    normed = gated_rms_norm(*tensors[:3], 1e-5, num_groups=2, backend="triton", out_dtype=out_dtype)
    assert not any(t.shape == normed.shape and torch.equal(t, normed) for t in saved)
