"""Gradient of A through the chunked SSD (torch and triton, float32) under Mamba2-range decays, vs the float64
recurrence; the naive float32 recurrence shown for scale. Per-head dA relative error."""
import os
import sys, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref import ssd_ref, rel
import wonderful_matrices as wm
torch.manual_seed(0)
b, l, h, p, g, n = 1, 150, 4, 4, 1, 8
for dtA in [0.5, 1.6, 4.0, 16.0]:
    x = torch.randn(b, l, h, p, dtype=torch.float64)
    dt = torch.rand(b, l, h, dtype=torch.float64) * 0.1 + 0.05
    A = -torch.full((h,), dtA / 0.1, dtype=torch.float64)  # dt·A ≈ -dtA per step on average
    B = torch.randn(b, l, g, n, dtype=torch.float64); C = torch.randn(b, l, g, n, dtype=torch.float64)
    Ar = A.clone().requires_grad_()
    yr = ssd_ref(x, dt, Ar, B, C)[0]
    gy = torch.randn_like(yr)
    (yr * gy).sum().backward()
    line = [f"dt*A~-{dtA:<4}"]
    for backend in ["naive", "torch", "triton"]:
        Aa = A.float().requires_grad_()
        y = wm.ops.ssd(x.float(), dt.float(), Aa, B.float(), C.float(), chunk_size=64, backend=backend)
        (y.double() * gy).sum().backward()
        line.append(f"{backend}: dA rel {rel(Aa.grad, Ar.grad):.1e} y rel {rel(y, yr):.1e}")
    print("  ".join(line), "| |dA_ref| =", f"{Ar.grad.norm().item():.3e}", flush=True)
