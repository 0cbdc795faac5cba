# rms_norm backend="torch" (float32 autograd of the formula): gradient wrong for large/tiny magnitudes.
# Float64 oracle = rms_norm_naive on float64 copies. Run: python repro_rms_torch_grad_scale.py [triton under TRITON_INTERPRET=1]
import sys, torch
from wonderful_matrices.ops.rms_norm import rms_norm
from wonderful_matrices.ops.rms_norm.naive import rms_norm_naive
backend = sys.argv[1] if len(sys.argv) > 1 else "torch"
for scale, eps in [(1.0, 1e-6), (1e10, 1e-6), (1e12, 1e-6), (1e13, 1e-6), (1e14, 1e-6), (1e16, 1e-6), (1e18, 1e-6),
                   (1e-12, 0.0), (1e-15, 0.0), (1e-20, 0.0)]:
    torch.manual_seed(0)
    x = torch.randn(4, 17) * scale
    w = torch.randn(17); gy = torch.randn(4, 17)
    x32 = x.clone().requires_grad_(True)
    (rms_norm(x32, w, eps, backend=backend) * gy).sum().backward()
    x64 = x.double().requires_grad_(True)
    y64, _ = rms_norm_naive(x64, w.double(), eps)
    (y64 * gy.double()).sum().backward()
    err = ((x32.grad.double() - x64.grad).abs().max() / x64.grad.abs().max()).item()
    print(f"{backend} scale={scale:g} eps={eps:g}: grad_x rel err={err:.3e}  finite={torch.isfinite(x32.grad).all().item()}")
