# gated_rms_norm backend="torch": gradients vs float64 oracle at large |x| (float32 autograd of rsqrt(mean(h^2)+eps)).
import sys, torch
from wonderful_matrices.ops.rms_norm import gated_rms_norm
from wonderful_matrices.ops.rms_norm.naive import gated_rms_norm_naive
backend = sys.argv[1] if len(sys.argv) > 1 else "torch"
for scale in (1.0, 1e13, 1e14, 1e16):
    torch.manual_seed(0)
    x = torch.randn(4, 16) * scale; z = torch.randn(4, 16); w = torch.randn(16); gy = torch.randn(4, 16)
    xc, zc = x.clone().requires_grad_(True), z.clone().requires_grad_(True)
    (gated_rms_norm(xc, zc, w, 1e-6, num_groups=2, backend=backend) * gy).sum().backward()
    xd, zd = x.double().requires_grad_(True), z.double().requires_grad_(True)
    (gated_rms_norm_naive(xd, zd, w.double(), 1e-6, 2) * gy.double()).sum().backward()
    e = lambda a, b: ((a.double() - b).abs().max() / b.abs().max()).item()
    print(f"{backend} scale={scale:g}: grad_x rel err={e(xc.grad, xd.grad):.3e} grad_z rel err={e(zc.grad, zd.grad):.3e}")
