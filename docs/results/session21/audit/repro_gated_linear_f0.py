# gated_linear with f = 0 (gate/up (2, 0), weight (3, 0)): accepted by the argument checks; "torch" returns the bias,
# "triton" (TRITON_INTERPRET=1 on CPU) under autograd crashes inside a reshape.
import torch
from wonderful_matrices.ops.gated_linear import gated_linear
for backend in ("torch", "triton"):
    g = torch.randn(2, 0, requires_grad=True); u = torch.randn(2, 0, requires_grad=True)
    w = torch.randn(3, 0, requires_grad=True); b = torch.randn(3, requires_grad=True)
    try:
        print(backend, gated_linear(g, u, w, b, backend=backend).shape)
    except Exception as e:
        print(backend, "EXC", type(e).__name__, e)
