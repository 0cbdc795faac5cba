"""Where the packed windowed DMA forward's time goes: profiler tables of select() and the forward, packed vs one row."""
import torch, torch.nn.functional as F
from torch.profiler import profile, ProfilerActivity
from wonderful_matrices.ops import dynamic_mask_attention
from wonderful_matrices.ops.dma import windowed_kernels as wk
from wonderful_matrices.bench.dma import document_ids
from wonderful_matrices.bench.common import time_callable

dev = torch.device("cuda")
T, h, d, w = 16384, 16, 128, 2048
g = torch.Generator().manual_seed(T + 1)
q, k, v = (torch.randn(1, T, h, d, generator=g).to(dev, torch.bfloat16).requires_grad_() for _ in range(3))
bias = (-F.softplus(torch.randn(1, T, h, generator=g) * 2)).to(dev).requires_grad_()
seq_idx = document_ids(T, 16, dev)
block = wk.block_for(w)
for name, s in (("one row", None), ("packed", seq_idx)):
    sel = lambda: wk.select(bias.detach(), T, w, block, s)
    fwd = lambda: dynamic_mask_attention(q.detach(), k.detach(), v.detach(), bias.detach(), keep_window=w, seq_idx=s)
    for _ in range(3):
        fwd()
    torch.cuda.synchronize()
    print(f"== {name}: select {time_callable(sel, dev, 3, 20):.3f} ms, forward {time_callable(fwd, dev, 3, 20):.3f} ms", flush=True)
    drop, keys, ends, heads = sel()
    print("   keys", tuple(keys.shape), "ends", tuple(ends.shape), "heads", tuple(heads.shape) if hasattr(heads, 'shape') else heads, flush=True)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            fwd()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70), flush=True)
for fn in (wk._fwd_kernel,):
    print("autotune cache", {str(kk): str(vv) for kk, vv in fn.cache.items()}, flush=True)
