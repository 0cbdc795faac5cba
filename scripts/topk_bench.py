"""Product-key top-k alone on one GPU, forward and forward+backward.

    PYTHONPATH=src python scripts/topk_bench.py

Shapes (bf16 query and sub-keys, float32 scores): cheems-base's routing per layer of an 8 × 4096-token step
(T = 32768, H = 4, √N = 48, dk = 32, k = 8), bench.cdmoe_target's N = 1024 (T = 8192, H = 8, √N = 32, dk = 32,
k = 16) and its N = 2^20 (√N = 1024). Prints one line per shape and forward kind (``topk_kernels.FORWARDS``, side by
side in this process): median ms over 20 calls. (A backward that
scattered the picks' gradients onto a register tile of sub-scores with two ``tl.dot`` per token block took 1.67 ms
at cheems-base's shape on an H100 against the atomic kernel's 0.56 ms and was removed:
docs/results/session5_h100/call3/topk.log.)
"""
from __future__ import annotations

import torch

from wonderful_matrices.bench.common import time_callable
from wonderful_matrices.ops import product_key_topk
from wonderful_matrices.ops.product_key import topk_kernels

SHAPES = {"cheems-base N=2304": (32768, 4, 48, 32, 8), "target N=1024": (8192, 8, 32, 32, 16),
          "target N=2^20": (8192, 8, 1024, 32, 16)}


def main() -> None:
    device = torch.device("cuda")
    for name, (T, H, n, dk, k) in SHAPES.items():
        gen = torch.Generator(device=device).manual_seed(0)
        query = torch.randn(T, H, 2, dk, device=device, generator=gen).bfloat16().requires_grad_()
        keys = (torch.randn(H, 2, n, dk, device=device, generator=gen) / dk ** 0.5).bfloat16().requires_grad_()
        grad = torch.randn(T, H, k, device=device, generator=gen)

        def forward():
            with torch.no_grad():
                product_key_topk(query, keys, k, backend="triton")

        def both():
            scores, _ = product_key_topk(query, keys, k, backend="triton")
            torch.autograd.grad(scores, (query, keys), grad)

        for kind in topk_kernels.FORWARDS:
            with topk_kernels.kinds(forward=kind):
                fwd = time_callable(forward, device, warmup=3, reps=20)
                ms = time_callable(both, device, warmup=3, reps=20)
            print(f"{name:<20} {kind:<9} T={T:<6} H={H} n={n:<5} dk={dk} k={k:<3} fwd {fwd:7.3f} ms   "
                  f"fwd+bwd {ms:7.3f} ms   bwd ~{ms - fwd:7.3f} ms", flush=True)

if __name__ == "__main__":
    main()
