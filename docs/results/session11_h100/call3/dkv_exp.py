"""Session 11: where windowed DMA's backward time goes. (1) fwd / fwd+bwd GPU time per selection block at 16K and
64K (B1 H16 D128 w2048, bf16) and cheems-base's shape (b2 16K, 12 q heads, 4 kv heads, D64); (2) at 16K block 512,
the dk/dv kernel per KEY_SIDE config, the autotuner's pick, and a copy with stores instead of atomics (timing only)."""
import re, sys, time, importlib.util
from pathlib import Path
import torch, torch.nn.functional as F
import triton
from wonderful_matrices.bench.common import device_kernel_times, time_callable
from wonderful_matrices.ops.dma import windowed_kernels as wk

dev = torch.device("cuda")
def inputs(b, T, hq, hkv, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, T, hq, d, generator=g).to(dev, torch.bfloat16).requires_grad_()
    k, v = (torch.randn(b, T, hkv, d, generator=g).to(dev, torch.bfloat16).requires_grad_() for _ in range(2))
    bias = (-F.softplus(torch.randn(b, T, hkv, generator=g) * 2)).to(dev).requires_grad_()
    return q, k, v, bias

def fwd_bwd(q, k, v, bias, block):
    out = wk.dynamic_mask_attention_triton(q, k, v, bias, 2048, q.shape[-1] ** -0.5, block=block)
    out.backward(torch.ones_like(out))

print("== (1) per selection block: GPU busy ms (fwd | fwd+bwd) and the largest kernels", flush=True)
for (b, T, hq, hkv, d) in [(1, 16384, 16, 16, 128), (1, 65536, 16, 16, 128), (2, 16384, 12, 4, 64)]:
    q, k, v, bias = inputs(b, T, hq, hkv, d)
    for block in (512, 1024, 2048):
        t0 = time.time()
        try:
            fk = device_kernel_times(lambda: wk.dynamic_mask_attention_triton(q, k, v, bias, 2048, d ** -0.5, block=block), dev, reps=3)
            bk = device_kernel_times(lambda: fwd_bwd(q, k, v, bias, block), dev, reps=3)
            top = ", ".join(f"{n[:14]} {ms:.3f}" for n, ms in list(bk.items())[:4])
            print(f"b{b} T{T} hq{hq} hkv{hkv} d{d} block {block}: fwd {sum(fk.values()):.3f} fwd+bwd {sum(bk.values()):.3f} | {top}"
                  f" | dkv cfg {wk._dkv_kernel.best_config} ({time.time()-t0:.0f}s)", flush=True)
        except Exception as e:
            print(f"b{b} T{T} block {block}: {type(e).__name__}: {str(e)[:200]}", flush=True)
        q.grad = k.grad = v.grad = bias.grad = None
    del q, k, v, bias
    torch.cuda.empty_cache()

print("== (2) dk/dv kernel alone at 16K block 512, per config; atomics vs stores", flush=True)
src = Path(wk.__file__).read_text()
src = src.replace("from ..common import", "from wonderful_matrices.ops.common import")
src = src.replace("from ..triton_utils import", "from wonderful_matrices.ops.triton_utils import")
src = src.replace("from .selection import", "from wonderful_matrices.ops.dma.selection import")
stores = src.replace("tl.atomic_add(dk_ptr + out_off, dk * scale, mask=amask)", "tl.store(dk_ptr + out_off, dk * scale, mask=amask)")
stores = stores.replace("tl.atomic_add(dv_ptr + out_off, dv, mask=amask)", "tl.store(dv_ptr + out_off, dv, mask=amask)")
stores = stores.replace("tl.atomic_add(dbias_ptr + (bi * lk + j) * hkv + g, db, mask=live)", "tl.store(dbias_ptr + (bi * lk + j) * hkv + g, db, mask=live)")
assert stores.count("tl.store(dk_ptr") == 1
Path("/tmp/wk_stores.py").write_text(stores)
spec = importlib.util.spec_from_file_location("wk_stores", "/tmp/wk_stores.py")
wks = importlib.util.module_from_spec(spec); spec.loader.exec_module(wks)

for (b, T, hq, hkv, d) in [(1, 16384, 16, 16, 128), (2, 16384, 12, 4, 64)]:
    q, k, v, bias = inputs(b, T, hq, hkv, d)
    block = wk.block_for(2048)
    with torch.no_grad():
        qc, kc, vc = q.detach(), k.detach(), v.detach()
        bias32 = bias.detach().float().contiguous()
        drop, keys, ends, heads = wk.select(bias.detach(), T, 2048, block)
        out, lse = wk.windowed_forward(qc, kc, vc, bias32, keys, ends, heads, drop, d ** -0.5, block)
        dout = torch.randn_like(out)
        lq, lk = T, T
        nb, width, n_tiles = keys.shape[1], keys.shape[2], ends.shape[2]
        delta = (dout.float() * out.float()).sum(-1).permute(0, 2, 1).reshape(b * hq, lq).contiguous()
        meta = wk._meta(qc, block, kc, vc, bias32, dout)
        common = (qc.stride(0), qc.stride(1), qc.stride(2), kc.stride(0), kc.stride(1), kc.stride(2),
                  bias32.stride(0), bias32.stride(1), bias32.stride(2), dout.stride(0), dout.stride(1), dout.stride(2),
                  lq, lk, hq, hkv, nb, width, n_tiles, d ** -0.5)
        dk = torch.zeros(b, lk, hkv, d, device=dev, dtype=torch.float32); dv = torch.zeros_like(dk)
        dbias = torch.zeros(b, lk, hkv, device=dev, dtype=torch.float32)
        for mod, label in ((wk, "atomic"), (wks, "stores")):
            for cfg in wk.KEY_SIDE:
                m, n, w, s = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages
                fn = lambda: mod._dkv_kernel.fn[(nb, triton.cdiv(width, n), b * hkv)](
                    qc, kc, vc, bias32, keys, ends, drop, dout, lse, delta, dk, dv, dbias, *common, **meta,
                    BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=s)
                try:
                    ms = time_callable(fn, dev, warmup=2, reps=10)
                    print(f"b{b} hq{hq} hkv{hkv} d{d} {label} M{m} N{n} w{w} s{s}: {ms:.3f} ms", flush=True)
                except Exception as e:
                    print(f"{label} M{m} N{n}: {type(e).__name__} {str(e)[:150]}", flush=True)
            # dq for reference, per config
        for cfg in wk.QUERY_SIDE:
            m, n, w, s = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages
            dq = torch.empty_like(qc)
            fn = lambda: wk._dq_kernel.fn[(triton.cdiv(lq, m), b * hq)](
                qc, kc, vc, bias32, keys, ends, heads, drop, dout, lse, delta, dq, *common, **meta,
                BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=s)
            try:
                print(f"b{b} d{d} dq M{m} N{n} w{w} s{s}: {time_callable(fn, dev, warmup=2, reps=10):.3f} ms", flush=True)
            except Exception as e:
                print(f"dq M{m} N{n}: {type(e).__name__} {str(e)[:150]}", flush=True)
    del q, k, v, bias
    torch.cuda.empty_cache()
