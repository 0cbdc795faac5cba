"""Session 11: windowed DMA at the new default block (block_for(2048) = 2048) against block 512 and 128 at 16K,
16 x 128 and cheems-base's 12 x 64 GQA 3, bf16 and float32: outputs and all gradients, relative errors."""
import torch, torch.nn.functional as F
from wonderful_matrices.ops.dma import windowed_kernels as wk

def run(b, T, hq, hkv, d, dtype, block):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, T, hq, d, generator=g); k = torch.randn(b, T, hkv, d, generator=g)
    v = torch.randn(b, T, hkv, d, generator=g); bias = -F.softplus(torch.randn(b, T, hkv, generator=g) * 2)
    w = torch.randn(b, T, hq, d, generator=g)
    leaves = [t.to("cuda", dtype).requires_grad_() for t in (q, k, v)] + [bias.cuda().requires_grad_()]
    out = wk.dynamic_mask_attention_triton(*leaves, 2048, d ** -0.5, block=block)
    (out.float() * w.cuda()).sum().backward()
    return [out.float()] + [t.grad.float() for t in leaves]

rel = lambda a, b: ((a - b).norm() / b.norm()).item()
for shape in ((1, 16384, 16, 16, 128), (2, 16384, 12, 4, 64)):
    for dtype in (torch.float32, torch.bfloat16):
        ref = run(*shape, dtype, 512)
        for block in (2048, 128):
            got = run(*shape, dtype, block)
            print(shape, dtype, f"block {block} vs 512:", " ".join(f"{n} {rel(a, r):.2e}" for n, a, r in zip(("out", "dq", "dk", "dv", "dbias"), got, ref)), flush=True)
