"""``wm.ops.rms_norm``'s contract on the torch path: the formula, the residual sum, dtypes and argument errors."""
import pytest
import torch

import wonderful_matrices as wm
from conftest import rel_err
from wonderful_matrices.ops.rms_norm.naive import rms_norm_naive


def test_formula_and_residual_sum():
    x, res, w = torch.randn(3, 4, 10), torch.randn(3, 4, 10), torch.randn(10)
    y = wm.ops.rms_norm(x, w, 1e-6, backend="torch")
    expected = w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert rel_err(y, expected) < 1e-6
    y2, s = wm.ops.rms_norm(x, w, 1e-6, residual=res)
    assert torch.equal(s, x + res) and rel_err(y2, rms_norm_naive(x + res, w, 1e-6)[0]) < 1e-7


@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16])
def test_out_dtype_is_one_rounding(w_dtype):
    """``out_dtype`` gives the default result rounded once to it (for bfloat16 weights the product of two bfloat16
    values, exact in float32); the torch path is differentiable through it."""
    x, res = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)
    w = torch.randn(8, dtype=w_dtype)
    y, _ = wm.ops.rms_norm(x, w, residual=res, out_dtype=torch.bfloat16, backend="torch")
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, wm.ops.rms_norm(x.float(), w.float(), residual=res)[0].to(torch.bfloat16))
    y.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    z = torch.randn(4, 8)
    g = wm.ops.gated_rms_norm(x.detach(), z, w, num_groups=2, out_dtype=torch.float16, backend="torch")
    assert g.dtype == torch.float16
    assert torch.equal(g, wm.ops.gated_rms_norm(x.detach(), z, w.float(), num_groups=2).half())
    with pytest.raises(ValueError, match="out_dtype"):
        wm.ops.gated_rms_norm(x, z, w, out_dtype=torch.int64)


def test_dtypes_follow_llama():
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    res = torch.randn(4, 8)
    y, s = wm.ops.rms_norm(x, torch.ones(8), residual=res)
    assert s.dtype == torch.float32 and y.dtype == torch.float32
    assert wm.ops.rms_norm(x, torch.ones(8, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("kwargs,match", [
    (dict(x=torch.randn(2, 4), weight=torch.randn(5)), "weight.shape"),
    (dict(x=torch.randn(2, 4), weight=torch.randn(4), residual=torch.randn(2, 5)), "residual.shape"),
    (dict(x=torch.randn(2, 4), weight=torch.randn(4), eps=-1.0), "eps"),
    (dict(x=torch.randn(2, 4).long(), weight=torch.randn(4)), "x.dtype"),
    (dict(x=torch.randn(2, 4), weight=torch.randn(4), backend="cuda"), "backend"),
    (dict(x=torch.randn(2, 4), weight=torch.randn(4), out_dtype=torch.int32), "out_dtype"),
    (dict(x=torch.randn(2, 4), weight=torch.randn(4), out_dtype="bf16"), "out_dtype"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        wm.ops.rms_norm(**kwargs)


def test_gated_formula_and_errors():
    x, z, w = torch.randn(3, 12), torch.randn(3, 12), torch.randn(12)
    h = x * torch.nn.functional.silu(z)
    grouped = h.view(3, 2, 6)
    expected = w * (grouped / torch.sqrt(grouped.pow(2).mean(-1, keepdim=True) + 1e-5)).view(3, 12)
    assert rel_err(wm.ops.gated_rms_norm(x, z, w, 1e-5, num_groups=2), expected) < 1e-6
    assert wm.layers.GatedRMSNorm(12, 2, 1e-5).to(torch.bfloat16)(x.bfloat16(), z).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="num_groups"):
        wm.ops.gated_rms_norm(x, z, w, num_groups=5)
    with pytest.raises(ValueError, match="gate.shape"):
        wm.ops.gated_rms_norm(x, z[:, :6], w)


def test_gated_norm_linear_is_the_composition_and_checks_its_arguments():
    x, z, w = torch.randn(3, 12), torch.randn(3, 12), torch.randn(12)
    lw, lb = torch.randn(5, 12), torch.randn(5)
    expected = torch.nn.functional.linear(wm.ops.gated_rms_norm(x, z, w, num_groups=2), lw, lb)
    assert torch.equal(wm.ops.gated_rms_norm_linear(x, z, w, lw, lb, num_groups=2), expected)
    with pytest.raises(ValueError, match="linear_weight.shape"):
        wm.ops.gated_rms_norm_linear(x, z, w, torch.randn(5, 11))
    with pytest.raises(ValueError, match="linear_bias.shape"):
        wm.ops.gated_rms_norm_linear(x, z, w, lw, torch.randn(4))
    with pytest.raises(ValueError, match="num_groups"):
        wm.ops.gated_rms_norm_linear(x, z, w, lw, num_groups=5)

