"""Windowed DMA forward and forward+backward at 16K and 64K (B1, 16 heads x 128, w = 2048, bf16) beside cuDNN SDPA,
in one process: run once with this checkout's code and once with the code before session 22's skipped carried keys
(``PYTHONPATH=<old>/src``) on the same warm machine; each prints JSON lines (wall ms = CUDA events around one call,
median; GPU ms = the kernels' busy time, bench.common.device_kernel_times).

    PYTHONPATH=src python docs/results/session22/dma_ranges.py new > new.jsonl
"""
import json
import sys

import torch
import torch.nn.functional as F

from wonderful_matrices.bench.common import device_kernel_times, time_callable
from wonderful_matrices.ops import dynamic_mask_attention

label = sys.argv[1] if len(sys.argv) > 1 else "new"
device = torch.device("cuda")
torch.manual_seed(0)
for T in (16384, 65536):
    q, k, v = (torch.randn(1, T, 16, 128, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, T, 16, device=device, requires_grad=True)
    impls = {"dma w2048": lambda: dynamic_mask_attention(q, k, v, bias, keep_window=2048),
             "sdpa causal": lambda: F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                                   v.transpose(1, 2), is_causal=True)}
    for name, fn in impls.items():
        def fwd():
            with torch.no_grad():
                fn()

        def fwd_bwd():
            out = fn()
            out.backward(torch.ones_like(out))
            for t in (q, k, v, bias):
                t.grad = None

        row = dict(code=label, T=T, impl=name, fwd_ms=time_callable(fwd, device, 3, 20),
                   fwd_bwd_ms=time_callable(fwd_bwd, device, 3, 20))
        for part, f in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
            times = device_kernel_times(f, device)
            row[f"{part}_gpu_ms"] = sum(times.values())
            row[f"{part}_kernels"] = {n[:40]: round(t, 4) for n, t in list(times.items())[:6]}
        print(json.dumps(row), flush=True)
