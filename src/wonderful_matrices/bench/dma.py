"""Dynamic mask attention benchmark: training-step cost vs length, and decoding cost at long context.

(a) forward and forward+backward time and peak memory of one attention call vs sequence length T: DMA with a
    window (our torch path, exact per-query top-w), DMA without a window, dense causal SDPA (cuDNN backend
    when it runs, else PyTorch's default choice) and FlexAttention causal (CUDA only, when it compiles), all in
    one process on the same inputs.
(b) one decoding step of the ``DynamicMaskAttention`` layer at long context, with a window (cache bounded to
    ``w`` keys per head) and without (cache of the whole context), beside plain SDPA over the full cache; and
    the bytes the layer's cache holds.

GPU: T = 2K…32K, batch 1, 16 heads × 128, bf16, window 2048; decode at 64K context, batch 1…8.
``--quick``: CPU-sized shapes (a minute).

    python -m wonderful_matrices.bench.dma --out DIR [--quick]
"""
from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F

from ..layers import DynamicMaskAttention
from ..ops import dynamic_mask_attention
from .common import peak_memory_bytes, synchronize, time_callable, write_results

FULL = dict(lengths=[2048, 4096, 8192, 16384, 32768], heads=16, head_dim=128, window=2048, dtype=torch.bfloat16,
            context=65536, batches=[1, 2, 4, 8], warmup=3, reps=10)
QUICK = dict(lengths=[256, 512, 1024], heads=4, head_dim=32, window=64, dtype=torch.float32,
             context=2048, batches=[1, 2], warmup=1, reps=3)


def _cudnn_context(device):
    """sdpa_kernel(CUDNN_ATTENTION) when it runs causal attention here; else a null context. -> (ctx, name)."""
    if device.type != "cuda":
        return contextlib.nullcontext, "default"
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        x = torch.randn(1, 2, 128, 128, device=device, dtype=torch.bfloat16, requires_grad=True)
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            F.scaled_dot_product_attention(x, x, x, is_causal=True).sum().backward()
        return (lambda: sdpa_kernel(SDPBackend.CUDNN_ATTENTION)), "cudnn"
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return contextlib.nullcontext, "default"


def _flex_causal(device, T, heads):
    """A compiled FlexAttention causal callable on (b, h, T, d) tensors, or None when unavailable."""
    if device.type != "cuda":
        return None
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        block_mask = create_block_mask(lambda b, h, q, k: q >= k, None, None, T, T, device=device)
        compiled = torch.compile(flex_attention)
        return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)
    except Exception:  # noqa: BLE001
        return None


def _measure(fn, inputs, device, warmup, reps):
    """Forward time, forward+backward time (ms) and peak memory of forward+backward, or an error string."""
    def fwd():
        with torch.no_grad():
            fn(*inputs)

    def fwd_bwd():
        out = fn(*inputs)
        out.backward(torch.ones_like(out))
        for t in inputs:
            t.grad = None

    try:
        return dict(fwd_ms=time_callable(fwd, device, warmup, reps),
                    fwd_bwd_ms=time_callable(fwd_bwd, device, warmup, reps),
                    peak_mem_mb=(lambda m: None if m is None else m / 2**20)(peak_memory_bytes(fwd_bwd, device)))
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return dict(error="out of memory")
    except Exception as exc:  # noqa: BLE001 - e.g. FlexAttention failing to compile: record it, keep going
        return dict(error=f"{type(exc).__name__}: {str(exc)[:120]}")


def _training_rows(cfg, device):
    rows = []
    h, d, w, dtype = cfg["heads"], cfg["head_dim"], cfg["window"], cfg["dtype"]
    cudnn, cudnn_name = _cudnn_context(device)
    for T in cfg["lengths"]:
        g = torch.Generator(device="cpu").manual_seed(T)
        q, k, v = (torch.randn(1, T, h, d, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
        bias = (-F.softplus(torch.randn(1, T, h, generator=g) * 2)).to(device).requires_grad_()
        qt, kt, vt = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))

        def sdpa(q, k, v):
            with cudnn():
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        impls = [(f"dma window {w}", lambda q, k, v, b: dynamic_mask_attention(q, k, v, b, keep_window=w),
                  (q, k, v, bias)),
                 ("dma no window", lambda q, k, v, b: dynamic_mask_attention(q, k, v, b), (q, k, v, bias)),
                 (f"sdpa causal ({cudnn_name})", sdpa, (qt, kt, vt))]
        flex = _flex_causal(device, T, h)
        if flex is not None:
            impls.append(("flex causal", flex, (qt, kt, vt)))
        base = None
        for name, fn, inputs in impls:
            row = dict(T=T, impl=name, **_measure(fn, inputs, device, cfg["warmup"], cfg["reps"]))
            if name.startswith("sdpa"):
                base = row.get("fwd_bwd_ms")
            rows.append(row)
            print(row, flush=True)
        for row in rows:
            if row["T"] == T and base and row.get("fwd_bwd_ms"):
                row["sdpa_time / time"] = base / row["fwd_bwd_ms"]
    return rows


def _cache_bytes(state):
    return sum(t.numel() * t.element_size() for t in state.values())


def _decode_rows(cfg, device):
    rows = []
    h, d, w, dtype, n = cfg["heads"], cfg["head_dim"], cfg["window"], cfg["dtype"], cfg["context"]
    for window in (w, None):
        layer = DynamicMaskAttention(h * d, h, h, d, keep_window=window).to(device, dtype).eval()
        for b in cfg["batches"]:
            kept = n if window is None else min(w, n)
            state = {"key": torch.randn(b, kept, h, d, device=device, dtype=dtype),
                     "value": torch.randn(b, kept, h, d, device=device, dtype=dtype),
                     "bias": -torch.rand(b, kept, h, device=device),
                     "position": torch.arange(n - kept, n, device=device).view(1, kept, 1).repeat(b, 1, h)}
            x = torch.randn(b, 1, h * d, device=device, dtype=dtype)
            pos = torch.full((b, 1), n, device=device, dtype=torch.long)
            bytes_before = _cache_bytes(state)
            with torch.no_grad():
                ms = time_callable(lambda: layer(x, pos, None, state), device, cfg["warmup"], cfg["reps"])
            rows.append(dict(context=n, batch=b, impl=f"DMA layer step, window {window}", step_ms=ms,
                             cache_mb=bytes_before / 2**20))
            print(rows[-1], flush=True)
            del state
    for b in cfg["batches"]:
        q = torch.randn(b, h, 1, d, device=device, dtype=dtype)
        kv = torch.randn(b, h, n, d, device=device, dtype=dtype)
        with torch.no_grad():
            ms = time_callable(lambda: F.scaled_dot_product_attention(q, kv, kv), device, cfg["warmup"], cfg["reps"])
        rows.append(dict(context=n, batch=b, impl="SDPA attention only, full cache", step_ms=ms,
                         cache_mb=2 * kv.numel() * kv.element_size() / 2**20))
        print(rows[-1], flush=True)
        del kv
    synchronize(device)
    return rows


def run(out_dir, quick: bool = False, device=None) -> list[dict]:
    """Run both parts; write ``results.json`` / ``results.md`` under ``out_dir``; return the rows."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = QUICK if quick else FULL
    train = _training_rows(cfg, device)
    decode = _decode_rows(cfg, device)
    rows = [dict(part="train", **r) for r in train] + [dict(part="decode", **r) for r in decode]
    columns = ["part", "T", "context", "batch", "impl", "fwd_ms", "fwd_bwd_ms", "peak_mem_mb", "sdpa_time / time",
               "step_ms", "cache_mb", "error"]
    meta = dict(quick=quick, device=str(device), heads=cfg["heads"], head_dim=cfg["head_dim"],
                keep_window=cfg["window"], dtype=str(cfg["dtype"]), lengths=cfg["lengths"],
                decode_context=cfg["context"], batches=cfg["batches"],
                note="fwd_bwd = forward + backward of one attention call, batch 1; ratio = SDPA time / this time")
    table = write_results(out_dir, "dma", rows, meta, columns)
    print(table)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    run(args.out, quick=args.quick, device=args.device)


if __name__ == "__main__":
    main()
