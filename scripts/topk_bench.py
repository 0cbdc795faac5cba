"""Product-key top-k alone on one GPU, forward and forward+backward, with both backward kernels side by side.

    PYTHONPATH=src python scripts/topk_bench.py

Shapes (bf16 query and sub-keys, float32 scores): cheems-base's routing per layer of an 8 × 4096-token step
(T = 32768, H = 4, √N = 48, dk = 32, k = 8), bench.cdmoe_target's N = 1024 (T = 8192, H = 8, √N = 32, dk = 32,
k = 16) and its N = 2^20 (√N = 1024). ``backward`` is ``dense`` (the picks' gradients on a register tile of
sub-scores, two ``tl.dot``; used for √N <= DENSE_MAX_KEYS) or ``atomic`` (gathers and float32 atomics; used above),
forced by setting ``DENSE_MAX_KEYS`` for the row. Prints one line per row: median ms over 20 calls.
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
    default = topk_kernels.DENSE_MAX_KEYS
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

        fwd = time_callable(forward, device, warmup=3, reps=20)
        for backward, limit in (("dense", n), ("atomic", 0)):
            if backward == "dense" and n > default:
                continue  # the dense tile does not fit in registers there
            topk_kernels.DENSE_MAX_KEYS = limit
            try:
                ms = time_callable(both, device, warmup=3, reps=20)
            finally:
                topk_kernels.DENSE_MAX_KEYS = default
            print(f"{name:<20} T={T:<6} H={H} n={n:<5} dk={dk} k={k:<3} fwd {fwd:7.3f} ms   fwd+bwd ({backward:>6}) "
                  f"{ms:7.3f} ms   bwd ~{ms - fwd:7.3f} ms", flush=True)


if __name__ == "__main__":
    main()
