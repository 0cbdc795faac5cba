"""``wm.ops.gated_linear``'s Triton autograd function on a CUDA device under bf16 autocast (a SwiGLU's product and
down projection as a model's training step runs them) against the formula. Skipped without CUDA; on a GPU machine
``AREA=norm OUT=DIR bash scripts/gpu_check.sh`` runs it with the norm tests."""
import pytest
import torch

import wonderful_matrices as wm
from conftest import rel_err
from cuda_helpers import needs_cuda

pytestmark = needs_cuda


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tokens,f,o", [(8 * 4096, 2048, 768), (1000, 1024, 768), (37, 100, 24)])
def test_gated_linear_cuda(bias, tokens, f, o):
    gen = torch.Generator().manual_seed(tokens + f)
    tensors = [torch.randn(tokens, f, generator=gen), torch.randn(tokens, f, generator=gen),
               torch.randn(o, f, generator=gen) * f ** -0.5, torch.randn(o, generator=gen) if bias else None]
    grad_out = torch.randn(tokens, o, generator=gen).to("cuda", torch.bfloat16)

    def run(backend):
        g, u, w, b = (None if t is None else t.to("cuda") for t in tensors)
        g, u = g.bfloat16().requires_grad_(), u.bfloat16().requires_grad_()  # the linears' outputs under autocast
        w.requires_grad_()
        if b is not None:
            b.requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = wm.ops.gated_linear(g, u, w, b, backend=backend)
        out.backward(grad_out)
        return out, [None if t is None else t.grad for t in (g, u, w, b)]

    out, grads = run("triton")
    ref, ref_grads = run("torch")
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) < 1e-2
    for name, a, r in zip(("gate", "up", "weight", "bias"), grads, ref_grads):
        assert (a is None and r is None) or (a.dtype == r.dtype and rel_err(a, r) < 1e-2), name
