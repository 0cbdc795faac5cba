"""The ops' ``torch.autograd.Function``s under Dynamo give their eager gradients.

On torch 2.11 (the GPU machine's), Dynamo traced a Function whose forward returned ``t.to(dtype)`` with ``t``
already of that dtype so that the Function's inputs got zero gradients, with the right forward values: compiled
cheems training lost every expert-table and routing gradient of CDMoE (docs/results.md, session 14). The ops return
through ``ops.common.cast`` now. These tests fail on torch 2.11 without it (checked on the CPU); torch 2.13 traced
the old code correctly, so on the pinned torch they guard the ops against the next such regression.

Each case runs the op eagerly and compiled (``fullgraph``; the ``eager`` backend is Dynamo alone, ``aot_eager`` adds
AOTAutograd's joint graph), same inputs, and compares the loss and every input gradient."""
import pytest
import torch

from conftest import INTERPRETED, interpreter_child_test, rel_err
from wonderful_matrices.ops import expert_mixture, product_key_topk
from wonderful_matrices.ops.expert_mixture import weighted_rows

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BACKENDS = ["eager", "aot_eager"]
MIXTURE_BACKENDS = ["torch", "dense", "triton"]
BOUND = {torch.float32: 1e-6, torch.bfloat16: 1e-3}


def _eager_and_compiled(fn, inputs, backend):
    """[(loss, [grad of each float input]) eager, (...) compiled]."""
    results = []
    for compiled in (False, True):
        torch._dynamo.reset()
        leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
        run = torch.compile(fn, backend=backend, fullgraph=True) if compiled else fn
        out = run(*leaves).float()
        weights = torch.linspace(-1, 1, out.numel(), device=out.device).view(out.shape)
        loss = (out * weights).sum()
        loss.backward()
        results.append((loss.detach(), [t.grad for t in leaves if t.is_floating_point()]))
    return results


def _assert_same(inputs, fn, backend, dtype):
    (loss, grads), (loss_c, grads_c) = _eager_and_compiled(fn, inputs, backend)
    assert rel_err(loss_c, loss) < BOUND[dtype]
    for i, (g, g_c) in enumerate(zip(grads, grads_c)):
        assert g is not None and g_c is not None, f"input {i}: a gradient is missing"
        assert g.abs().max() > 0, f"input {i}: the eager gradient is zero, the case tests nothing"
        assert rel_err(g_c, g) < BOUND[dtype], f"input {i}: compiled gradient differs"


def _mixture_inputs(device, dtype, T=37, d=32, N=64, H=2, k=4):
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(T, d, device=device, generator=g).to(dtype)
    ids = torch.randint(0, N, (T, H, k), device=device, generator=g)
    gates = torch.rand(T, H, k, device=device, generator=g)
    down, up = ((torch.randn(N, d, device=device, generator=g) / 4).to(dtype) for _ in range(2))
    return x, ids, gates, down, up


def _skip_unless_here(device, kernels, dtype=torch.float32):
    """Triton kernels on the CPU run in the interpreter's child process (float32 only); everything else runs in this
    process."""
    if device == "cpu" and kernels == "triton":
        if not INTERPRETED:
            pytest.skip("runs in the TRITON_INTERPRET=1 child process")
        if dtype != torch.float32:
            pytest.skip("the interpreter's half-precision arithmetic is unreliable")
    elif INTERPRETED:
        pytest.skip("runs in the parent process")


@pytest.mark.parametrize("kernels", MIXTURE_BACKENDS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_expert_mixture_compiled_gradients(device, dtype, backend, kernels):
    """Every mixture backend (the dense one is CUDA's ``auto`` for cheems-base, the gather ones for large pools)."""
    _skip_unless_here(device, kernels, dtype)
    inputs = _mixture_inputs(device, dtype)
    _assert_same(inputs, lambda x, i, g, dn, u: expert_mixture(x, i, g, dn, u, backend=kernels), backend, dtype)


@pytest.mark.parametrize("kernels", MIXTURE_BACKENDS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("device", DEVICES)
def test_weighted_rows_compiled_gradients(device, backend, kernels):
    """The product-key memory read (PEER / PKM layers), every backend."""
    _skip_unless_here(device, kernels)
    _, ids, gates, down, _ = _mixture_inputs(device, torch.float32)
    _assert_same((gates.flatten(1), ids.flatten(1), down),
                 lambda w, i, t: weighted_rows(w, i, t, backend=kernels), backend, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("device", DEVICES)
def test_product_key_topk_compiled_gradients(device, backend):
    """The routing's scores: the torch path on the CPU, the fused Triton kernel on CUDA and in the interpreter's
    child process."""
    g = torch.Generator(device=device).manual_seed(1)
    query = torch.randn(29, 2, 2, 8, device=device, generator=g)
    keys = torch.randn(2, 2, 8, 8, device=device, generator=g)
    _assert_same((query, keys), lambda q, kk: product_key_topk(q, kk, 4)[0], backend, torch.float32)


test_interpreted_in_a_subprocess = interpreter_child_test(__file__)
