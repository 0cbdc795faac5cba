"""``wm.ops.gated_linear`` (a gated MLP's product and down projection): the formula, argument errors, and the
Triton autograd function under the interpreter (float32; fp16 autocast) against it, keeping no copy of the
product; its kernels compiled for sm_90."""
import operator

import pytest
import torch

import wonderful_matrices as wm
from conftest import (
    compile_for_sm90,
    compiles_real_kernels,
    interpreted_only,
    interpreter_child_test,
    kept_for_backward,
    rel_err,
)


def test_formula_and_errors():
    g, u, w, b = torch.randn(3, 5, 8), torch.randn(3, 5, 8), torch.randn(4, 8), torch.randn(4)
    for activation, act in (("silu", torch.nn.functional.silu), ("relu", torch.relu)):
        expected = torch.nn.functional.linear(act(g) * u, w, b)
        assert torch.equal(wm.ops.gated_linear(g, u, w, b, activation, backend="torch"), expected)
    with pytest.raises(ValueError, match="up.shape"):
        wm.ops.gated_linear(g, u[..., :7], w)
    with pytest.raises(ValueError, match="weight.shape"):
        wm.ops.gated_linear(g, u, torch.randn(4, 7))
    with pytest.raises(ValueError, match="bias.shape"):
        wm.ops.gated_linear(g, u, w, torch.randn(3))
    with pytest.raises(ValueError, match="activation"):
        wm.ops.gated_linear(g, u, w, activation="tanh")


test_interpreted_in_a_subprocess = interpreter_child_test(__file__)


@interpreted_only
@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "autocast-fp16"])
@pytest.mark.parametrize("bias", [False, True])
def test_triton_matches_the_formula_and_keeps_no_product(autocast, bias):
    gen = torch.Generator().manual_seed(2)
    dtype = torch.float16 if autocast else torch.float32
    # (T, f) rows past one 1024-element block, as the linears before it give them under autocast
    tensors = [torch.randn(37, 96, generator=gen).to(dtype), torch.randn(37, 96, generator=gen).to(dtype),
               torch.randn(24, 96, generator=gen) * 0.1, torch.randn(24, generator=gen) if bias else None]
    grad_out = torch.randn(37, 24, generator=gen)

    def run(backend):
        leaves = [None if t is None else t.clone().requires_grad_(True) for t in tensors]
        saved = []
        with torch.autocast("cpu", dtype=torch.float16, enabled=autocast), \
                torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = wm.ops.gated_linear(*leaves, backend=backend)
        out.backward(grad_out.to(out.dtype))
        return out, [None if t is None else t.grad for t in leaves], saved

    out, grads, saved = run("triton")
    ref, ref_grads, _ = run("torch")
    tol = 2e-3 if autocast else 1e-5
    assert out.dtype == ref.dtype and rel_err(out, ref) < tol
    for name, a, r in zip(("gate", "up", "weight", "bias"), grads, ref_grads):
        assert (a is None and r is None) or (a.dtype == r.dtype and rel_err(a, r) < tol), name
    product = torch.nn.functional.silu(tensors[0].float()) * tensors[1].float()
    assert not any(t.shape == product.shape and rel_err(t.float(), product) < 1e-2 for t in saved)


@interpreted_only
def test_triton_backend_with_no_features_is_the_bias():
    # f = 0 passes the argument checks; the formula gives the bias (and zero weight / bias gradients as it does), the
    # autograd function had crashed reshaping an empty tensor
    leaves = [torch.randn(2, 0, requires_grad=True), torch.randn(2, 0, requires_grad=True),
              torch.randn(3, 0, requires_grad=True), torch.randn(3, requires_grad=True)]
    out = wm.ops.gated_linear(*leaves, backend="triton")
    assert torch.equal(out, leaves[3].detach().expand(2, 3))
    out.sum().backward()
    assert torch.equal(leaves[3].grad, torch.full((3,), 2.0))


@interpreted_only
def test_compiled_mlp_keeps_gate_and_up_only():
    """Under ``torch.compile`` (AOTAutograd's partitioner decides what is kept) a GatedMLP keeps its input, ``gate``
    and ``up`` — not the product, which the plain composition keeps beside them."""
    mlp = wm.layers.GatedMLP(32, 64, backend="triton")  # what "auto" takes on CUDA
    kept = kept_for_backward(lambda x: mlp(x).float().sum(), torch.randn(40, 32, requires_grad=True),
                             autocast_dtype=torch.float16)
    products = [n for n in kept if "mul" in str(n.target) or (
        n.target is operator.getitem and "gated_product" in str(n.args[0].target))
        or "gated_product_forward" in str(n.target)]
    activations = [n for n in kept if n.meta["val"].shape == (40, 64)]
    assert not products and len(activations) == 2, (products, activations)


@compiles_real_kernels
@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_kernels_compile_for_sm90(dtype):
    from wonderful_matrices.ops.gated_linear import fused_kernels as k

    p = f"*{dtype}"
    compile_for_sm90(k._product_kernel, {"g_ptr": p, "u_ptr": p, "p_ptr": p, "N": "i32", "BLOCK": "constexpr"},
                     {"BLOCK": k.BLOCK}, 4, aligned=True)
    compile_for_sm90(k._product_bwd_kernel, {"g_ptr": p, "u_ptr": p, "dp_ptr": p, "dg_ptr": p, "du_ptr": p,
                                             "p_ptr": p, "N": "i32", "BLOCK": "constexpr"},
                     {"BLOCK": k.BLOCK}, 4, aligned=True)
