"""Dynamic mask attention benchmark: training-step cost vs length, and decoding cost at long context.

(a) forward and forward+backward time and peak memory of one attention call vs sequence length T: DMA with a
    window (the Triton kernels where usable — their selection replayed from CUDA graphs by default,
    ops/dma/selection_graphs.py, and also run eagerly — and the torch path), DMA without a window (on CUDA also as one
    fused SDPA call with the bias as extra key channels: ops/dma/biased_sdpa.py), dense causal SDPA
    (cuDNN backend when it runs, else PyTorch's default choice) and FlexAttention causal (CUDA only, when it
    compiles), all in one process on the same inputs; plus the windowed paths' selection stage alone
    (``live_keys`` for Triton, ``select_blocks`` for torch, and on CUDA the torch operations that are the
    selection kernels' oracle; no gradient), so kernel time = total − selection.
(p) packed documents: one row of several documents (``seq_idx``) against the same row unpacked, with and
    without a window — what packing costs.
(b) decoding at long context, like with like. Attention only (after the projections): one DMA step with a
    window (evict the lowest ranked slot, write the new key, attend over the ``w`` slots), one DMA step
    without a window (append, attend over the whole cache) — each with the torch step of ``ops.dma.DecodeStep``
    and, where Triton runs, its fused Triton step (``[triton fused]``, ops/dma/decode.py) — and one SDPA step (write the
    new key/value into a preallocated full cache, attend over it; separate K and V, same heads) — eagerly and,
    on CUDA, replayed from a CUDA graph (which also proves the step has no host synchronisation). Whole
    layers: the ``DynamicMaskAttention`` layer step (its default ``decode_backend``: the fused step on CUDA)
    beside this package's Llama-style ``Attention`` layer step (its cache grows by concatenation). Plus the
    bytes each cache holds.

Every training row carries ``kept_fraction``: the kept (query, key) pairs over dense causal attention's. Rows of
(a) and (p) carry wall times (``fwd_ms``, ``fwd_bwd_ms``: what one call costs its caller, host work included) and
GPU busy times (``fwd_gpu_ms``, ``fwd_bwd_gpu_ms``: the kernels alone, ``common.device_kernel_times``); where the
host is slower than the GPU (one layer's call at batch 1 on a slow CPU) the two differ, and the GPU times are what
a model's step pays while its host keeps ahead.

GPU: T = 4K, 16K, 64K, 128K, batch 1, 16 heads × 128, bf16, window 2048 (the torch windowed path up to 32K);
packed: 16 documents in 16K; decode at 64K context, batch 1…8.
``--quick``: CPU-sized shapes (a minute).

    python -m wonderful_matrices.bench.dma --out DIR [--quick] [--lengths T ...] [--selection-only] [--kernels]

``--kernels`` (CUDA): also where each training row's GPU time goes — the largest kernels of its forward and of its
forward+backward, per call (part "kernels").
"""
from __future__ import annotations

import argparse
import contextlib
import itertools

import torch
import torch.nn.functional as F

from ..layers import Attention, DynamicMaskAttention
from ..ops import dynamic_mask_attention
from ..ops.common import triton_usable
from ..ops.dma import DecodeStep, cache_state, selection_graphs
from ..ops.dma.biased_sdpa import dynamic_mask_attention_biased_sdpa
from ..ops.dma.selection import default_block, live_keys_torch, select_blocks
from .common import device_kernel_times, peak_memory_bytes, synchronize, time_callable, write_results

FULL = dict(lengths=[4096, 16384, 65536, 131072], heads=16, head_dim=128, window=2048, dtype=torch.bfloat16,
            context=65536, batches=[1, 2, 4, 8], warmup=3, reps=10, packed_length=16384, documents=16,
            torch_window_max_length=32768)
KERNEL_ROWS = 12  # kernels listed per implementation and pass with ``kernels=True``; the rest summed in one row
QUICK = dict(lengths=[256, 512, 1024], heads=4, head_dim=32, window=64, dtype=torch.float32,
             context=2048, batches=[1, 2], warmup=1, reps=3, packed_length=512, documents=5,
             torch_window_max_length=1024)


def kept_fraction(T: int, window: int | None) -> float:
    """Kept (query, key) pairs over those of dense causal attention at length ``T``: ``Σ min(i + 1, w) / Σ (i + 1)``
    (no padding), the fraction of the dense causal FLOPs a window needs."""
    if window is None or window >= T:
        return 1.0
    kept = window * (window + 1) // 2 + (T - window) * window
    return kept / (T * (T + 1) // 2)


def document_ids(T: int, count: int, device) -> torch.Tensor:
    """``seq_idx (1, T)`` of ``count`` documents of deterministic, uneven lengths (from about T/(3·count) to
    about 2T/count)."""
    weights = torch.linspace(0.3, 1.7, count)[torch.randperm(count, generator=torch.Generator().manual_seed(count))]
    lengths = (weights / weights.sum() * T).long().clamp_min(1)
    lengths[-1] += T - lengths.sum()
    return torch.repeat_interleave(torch.arange(count), lengths).view(1, T).to(device)


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
    """Of ``fn(*inputs)``: forward time (without autograd), forward+backward time (ms), their GPU busy times and
    peak memory of forward+backward -> ``(row fields, {"fwd": kernel times, "fwd_bwd": kernel times})`` (kernel
    times: ``bench.common.device_kernel_times``, None off CUDA), or ``({"error": ...}, {})``."""
    def fwd():
        with torch.no_grad():
            fn(*inputs)

    def fwd_bwd():
        out = fn(*inputs)
        out.backward(torch.ones_like(out))
        for t in inputs:
            t.grad = None

    try:
        fields = dict(fwd_ms=time_callable(fwd, device, warmup, reps),
                      fwd_bwd_ms=time_callable(fwd_bwd, device, warmup, reps))
        kernels = {"fwd": device_kernel_times(fwd, device), "fwd_bwd": device_kernel_times(fwd_bwd, device)}
        for name, times in kernels.items():
            fields[f"{name}_gpu_ms"] = None if times is None else sum(times.values())
        memory = peak_memory_bytes(fwd_bwd, device)
        return dict(fields, peak_mem_mb=None if memory is None else memory / 2**20), kernels
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return dict(error="out of memory"), {}
    except Exception as exc:  # noqa: BLE001 - e.g. FlexAttention failing to compile: record it, keep going
        return dict(error=f"{type(exc).__name__}: {str(exc)[:120]}"), {}


# (column, timing field): SDPA's time over a row's, the speed-up, in wall time (forward + backward; forward
# alone) and in GPU busy time (the same two)
RATIOS = (("sdpa_time / time", "fwd_bwd_ms"), ("sdpa / this, fwd", "fwd_ms"),
          ("sdpa / this, gpu fwd_bwd", "fwd_bwd_gpu_ms"), ("sdpa / this, gpu fwd", "fwd_gpu_ms"))


def sdpa_ratios(sdpa: dict, row: dict) -> dict:
    """SDPA's row ``sdpa`` against a training row of the same length: each of :data:`RATIOS` where both have the
    timing (none off CUDA for the GPU ones, none for a row that failed)."""
    return {column: sdpa[field] / row[field] for column, field in RATIOS if sdpa.get(field) and row.get(field)}


def _kernel_rows(T, impl, kernels: dict, top=KERNEL_ROWS):
    """Rows of part "kernels": of each pass in ``kernels`` (:func:`_measure`'s), the ``top`` kernels by GPU time
    per call, the rest summed as one row; none off CUDA."""
    rows = []
    for name, times in kernels.items():
        names = list(times or ())
        for kernel in names[:top]:
            rows.append(dict(T=T, impl=impl, **{"pass": name}, kernel=kernel[:90], kernel_ms=times[kernel]))
        if len(names) > top:
            rows.append(dict(T=T, impl=impl, **{"pass": name}, kernel=f"({len(names) - top} other kernels)",
                             kernel_ms=sum(times[k] for k in names[top:])))
    return rows


def _time_or_error(fn, device, cfg):
    try:
        return time_callable(fn, device, cfg["warmup"], cfg["reps"])
    except Exception as exc:  # noqa: BLE001 - record and keep going
        return f"{type(exc).__name__}: {str(exc)[:120]}"


def _selection_rows(cfg, device, T, bias):
    """The windowed paths' selection alone (no gradient), so kernel time = total − selection: the Triton path's
    (``live_keys``: drop per key, per-block live-key lists; its Triton kernels on CUDA), the torch path's
    (``select_blocks``; on CUDA built from the same kernels' lists) and, on CUDA, the torch operations that are the
    kernels' oracle (``live_keys_torch``, the selection before the kernels)."""
    rows = []
    w = cfg["window"]
    rows_bias = bias.permute(0, 2, 1).reshape(-1, T)
    if device.type == "cuda" and triton_usable(device):
        from ..ops.dma.windowed_kernels import block_for, select

        ms = _time_or_error(lambda: select(bias, T, w, block_for(w)), device, cfg)
        rows.append(dict(T=T, impl=f"selection only, triton (live_keys, block {block_for(w)})", fwd_ms=ms))
        ms = _time_or_error(lambda: live_keys_torch(rows_bias, T, w, block_for(w)), device, cfg)
        rows.append(dict(T=T, impl=f"selection only, torch ops (live_keys_torch, block {block_for(w)})", fwd_ms=ms))
    if T <= cfg["torch_window_max_length"]:
        ms = _time_or_error(lambda: select_blocks(rows_bias, T, w, default_block(w)), device, cfg)
        rows.append(dict(T=T, impl=f"selection only, torch (select_blocks, block {default_block(w)})", fwd_ms=ms))
    for row in rows:
        print(row, flush=True)
    return rows


def _training_rows(cfg, device):
    """Rows of part "train" (and "kernels" with ``cfg["kernels"]``) at every length of ``cfg["lengths"]``."""
    rows, kernels = [], []
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

        impls = []
        rows += _selection_rows(cfg, device, T, bias.detach())
        if device.type == "cuda" and triton_usable(device):
            impls.append((f"dma window {w} triton",
                          lambda q, k, v, b: dynamic_mask_attention(q, k, v, b, keep_window=w, backend="triton"),
                          (q, k, v, bias)))

            def eager_selection(q, k, v, b):
                with selection_graphs.enabled(False):
                    return dynamic_mask_attention(q, k, v, b, keep_window=w, backend="triton")

            impls.append((f"dma window {w} triton, eager selection", eager_selection, (q, k, v, bias)))
        if T <= cfg["torch_window_max_length"]:  # the reference path: slow and memory-hungry at long T
            impls.append((f"dma window {w} torch",
                          lambda q, k, v, b: dynamic_mask_attention(q, k, v, b, keep_window=w, backend="torch"),
                          (q, k, v, bias)))
        impls.append(("dma no window", lambda q, k, v, b: dynamic_mask_attention(q, k, v, b), (q, k, v, bias)))
        if device.type == "cuda":  # the same op as one fused SDPA call (what "auto" takes once switched on)
            impls.append(("dma no window, biased sdpa",
                          lambda q, k, v, b: dynamic_mask_attention_biased_sdpa(q, k, v, b, d ** -0.5),
                          (q, k, v, bias)))
        impls.append((f"sdpa causal ({cudnn_name})", sdpa, (qt, kt, vt)))
        flex = _flex_causal(device, T, h)
        if flex is not None:
            impls.append(("flex causal", flex, (qt, kt, vt)))
        base = {}
        for name, fn, inputs in impls:
            fields, times = _measure(fn, inputs, device, cfg["warmup"], cfg["reps"])
            row = dict(T=T, impl=name, kept_fraction=kept_fraction(T, w if name.startswith("dma window") else None),
                       **fields)
            if name.startswith("sdpa"):
                base = row
            rows.append(row)
            print(row, flush=True)
            if cfg.get("kernels"):
                kernels += _kernel_rows(T, name, times)
        for row in rows:
            if row["T"] == T:
                row.update(sdpa_ratios(base, row))
        q = k = v = bias = qt = kt = vt = None  # free the inputs before the next length allocates
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows, kernels


def _packed_rows(cfg, device):
    """One row of ``documents`` packed documents (``seq_idx``) against the same row unpacked, windowed and not,
    through ``backend="auto"``; ``packed / unpacked`` is the cost of packing in wall time (forward+backward), the
    ``gpu`` ratios the same in GPU busy time (forward; forward+backward)."""
    T, h, d, w, dtype = cfg["packed_length"], cfg["heads"], cfg["head_dim"], cfg["window"], cfg["dtype"]
    if not T:
        return []
    g = torch.Generator(device="cpu").manual_seed(T + 1)
    q, k, v = (torch.randn(1, T, h, d, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
    bias = (-F.softplus(torch.randn(1, T, h, generator=g) * 2)).to(device).requires_grad_()
    seq_idx = document_ids(T, cfg["documents"], device)
    rows = []
    for window in (w, None):
        label = f"dma window {w}" if window else "dma no window"
        pair = []
        for packed in (False, True):
            s = seq_idx if packed else None
            fields, _ = _measure(lambda q, k, v, b, s=s, window=window: dynamic_mask_attention(
                q, k, v, b, keep_window=window, seq_idx=s), (q, k, v, bias), device, cfg["warmup"], cfg["reps"])
            row = dict(T=T, impl=f"{label}, {cfg['documents']} documents packed" if packed else f"{label}, one row",
                       kept_fraction=kept_fraction(T, window), **fields)
            pair.append(row)
            print(row, flush=True)
        for time, column in (("fwd_bwd_ms", "packed / unpacked"), ("fwd_gpu_ms", "packed / unpacked, gpu fwd"),
                             ("fwd_bwd_gpu_ms", "packed / unpacked, gpu fwd_bwd")):
            if pair[0].get(time) and pair[1].get(time):
                pair[1][column] = pair[1][time] / pair[0][time]
        rows += pair
    return rows


def _cache_bytes(state):
    return sum(t.numel() * t.element_size() for t in state.values())


def _graphed(fn, device):
    """A CUDA-graph replay of ``fn`` (captured after warm-up on a side stream), or None off CUDA."""
    if device.type != "cuda":
        return None
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _step_rows(name, fn, device, cfg, base, graph=True):
    """Eager (and CUDA-graph) timing rows of one decoding step; ``base`` = dict(context, batch, cache_mb)."""
    rows = []
    with torch.no_grad():
        rows.append(dict(base, impl=name, step_ms=_time_or_error(fn, device, cfg)))
        if graph and device.type == "cuda":
            try:
                replay = _graphed(fn, device)
                rows.append(dict(base, impl=name + " [cuda graph]", step_ms=_time_or_error(replay, device, cfg)))
            except Exception as exc:  # noqa: BLE001
                rows.append(dict(base, impl=name + " [cuda graph]", error=f"{type(exc).__name__}: {str(exc)[:120]}"))
    for row in rows:
        print(row, flush=True)
    return rows


def _dma_state(b, kept, n, h, d, device, dtype):
    """A DMA cache of ``kept`` random keys at positions ``n - kept .. n - 1`` (``h`` KV heads)."""
    return cache_state(torch.randn(b, kept, h, d, device=device, dtype=dtype),
                       torch.randn(b, kept, h, d, device=device, dtype=dtype), -torch.rand(b, kept, h, device=device),
                       torch.arange(n - kept, n, device=device).view(1, kept, 1).expand(b, kept, h))


def _decode_rows(cfg, device):
    rows = []
    h, d, w, dtype, n = cfg["heads"], cfg["head_dim"], cfg["window"], cfg["dtype"], cfg["context"]
    for b in cfg["batches"]:
        g = torch.Generator(device="cpu").manual_seed(b)
        q, k, v = (torch.randn(b, 1, h, d, generator=g).to(device, dtype) for _ in range(3))
        bias = -torch.rand(b, 1, h, generator=g).to(device)
        position = torch.full((b, 1, h), n, device=device, dtype=torch.long)
        # attention only: DMA with a window (w slots), DMA without (n slots, grows), SDPA over a full cache
        backends = ["torch"] + (["triton"] if triton_usable(device) else [])
        for window, backend in itertools.product((w, None), backends):
            decoder = DecodeStep(backend)
            state = _dma_state(b, n if window is None else min(w, n), n, h, d, device, dtype)
            name = f"DMA attention step, window {window}" + (" [triton fused]" if backend == "triton" else "")
            try:
                with torch.no_grad():  # buffers (and the fused step's workspace) allocated once, outside the timing
                    decoder.step(q, k, v, bias, position, state, window)
            except Exception as exc:  # noqa: BLE001 - e.g. the Triton kernels failing to compile: record it
                rows.append(dict(context=n, batch=b, impl=name, error=f"{type(exc).__name__}: {str(exc)[:120]}"))
                print(rows[-1], flush=True)
                continue
            base = dict(context=n, batch=b, cache_mb=_cache_bytes(state) / 2**20)
            rows += _step_rows(name, lambda: decoder.step(q, k, v, bias, position, state, window), device, cfg,
                               base, graph=window is not None)
            state = None  # free the cache before the next one is allocated
        kbuf = torch.randn(b, h, n + 1, d, device=device, dtype=dtype)
        vbuf = torch.randn(b, h, n + 1, d, device=device, dtype=dtype)
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))

        def sdpa_step():
            kbuf[:, :, n:n + 1].copy_(kt)
            vbuf[:, :, n:n + 1].copy_(vt)
            return F.scaled_dot_product_attention(qt, kbuf, vbuf)

        base = dict(context=n, batch=b, cache_mb=2 * kbuf.numel() * kbuf.element_size() / 2**20)
        rows += _step_rows("SDPA attention step, full cache", sdpa_step, device, cfg, base)
        kbuf = vbuf = None
        # whole layers (projections, RoPE, cache update, attention)
        x = torch.randn(b, 1, h * d, generator=g).to(device, dtype)
        pos = torch.full((b, 1), n, device=device, dtype=torch.long)
        for window in (w, None):
            layer = DynamicMaskAttention(h * d, h, h, d, keep_window=window).to(device, dtype).eval()
            state = _dma_state(b, n if window is None else min(w, n), n, h, d, device, dtype)
            with torch.no_grad():
                layer(x, pos, None, state)
            base = dict(context=n, batch=b, cache_mb=_cache_bytes(state) / 2**20)
            rows += _step_rows(f"DMA layer step, window {window}", lambda: layer(x, pos, None, state), device, cfg,
                               base, graph=False)
            state = None
        attn = Attention(h * d, h, h, d).to(device, dtype).eval()
        state = {"key": torch.randn(b, n, h, d, device=device, dtype=dtype),
                 "value": torch.randn(b, n, h, d, device=device, dtype=dtype),
                 "key_mask": torch.ones(b, n, dtype=torch.bool, device=device)}
        base = dict(context=n, batch=b, cache_mb=_cache_bytes(state) / 2**20)

        def attn_step():  # the cache is reset each call so the context stays n
            s = dict(state)
            return attn(x, pos, None, s)

        rows += _step_rows("Attention layer step (Llama-style, cat cache)", attn_step, device, cfg, base, graph=False)
        state = None
    synchronize(device)
    for row in rows:
        ref = next((r for r in rows if r["batch"] == row["batch"] and r["impl"].startswith("SDPA attention step")
                    and r["impl"].endswith("[cuda graph]") == row["impl"].endswith("[cuda graph]")), None)
        if row["impl"].startswith("DMA attention") and ref and isinstance(ref.get("step_ms"), float) \
                and isinstance(row.get("step_ms"), float):
            row["sdpa_time / time"] = ref["step_ms"] / row["step_ms"]
    return rows


def run(out_dir, quick: bool = False, device=None, lengths=None, batches=None,
        packed_length: int | None = None, selection_only: bool = False, kernels: bool = False) -> list[dict]:
    """Run every part; write ``results.json`` / ``results.md`` under ``out_dir``; return the rows.

    ``lengths`` (training T) and ``batches`` (decode batch sizes) restrict the grid; an empty list skips that part;
    ``packed_length`` is the length of the packed-documents comparison (0 skips it). ``selection_only``: only the
    selection rows of each length (part "train", a bias drawn alone: the same distribution, other values).
    ``kernels``: also where each training row's GPU time goes (part "kernels", CUDA only: :func:`_kernel_rows`).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = dict(QUICK if quick else FULL)
    if lengths is not None:
        cfg["lengths"] = list(lengths)
    if batches is not None:
        cfg["batches"] = list(batches)
    if packed_length is not None:
        cfg["packed_length"] = packed_length
    cfg["kernels"] = kernels
    if selection_only:
        train = []
        for T in cfg["lengths"]:
            g = torch.Generator(device="cpu").manual_seed(T)
            train += _selection_rows(cfg, device, T, (-F.softplus(torch.randn(1, T, cfg["heads"], generator=g) * 2))
                                     .to(device))
        kernels, packed, decode = [], [], []
    else:
        train, kernels = _training_rows(cfg, device)
        packed = _packed_rows(cfg, device)
        decode = _decode_rows(cfg, device)
    rows = ([dict(part="train", **r) for r in train] + [dict(part="packed", **r) for r in packed]
            + [dict(part="decode", **r) for r in decode] + [dict(part="kernels", **r) for r in kernels])
    columns = ["part", "T", "context", "batch", "impl", "kept_fraction", "fwd_ms", "fwd_bwd_ms", "fwd_gpu_ms",
               "fwd_bwd_gpu_ms", "peak_mem_mb", *(column for column, _ in RATIOS), "packed / unpacked",
               "packed / unpacked, gpu fwd",
               "packed / unpacked, gpu fwd_bwd", "step_ms", "cache_mb", "pass", "kernel", "kernel_ms", "error"]
    meta = dict(quick=quick, device=str(device), heads=cfg["heads"], head_dim=cfg["head_dim"],
                keep_window=cfg["window"], dtype=str(cfg["dtype"]), lengths=cfg["lengths"],
                decode_context=cfg["context"], batches=cfg["batches"],
                note="fwd_bwd = forward + backward of one attention call, batch 1; *_gpu_ms = GPU busy time (kernels "
                     "only); ratios = SDPA time / this time "
                     "(train: fwd_bwd; decode: the SDPA attention step, eager vs eager, graph vs graph)")
    table = write_results(out_dir, "dma", rows, meta, columns)
    print(table)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default=None)
    parser.add_argument("--lengths", type=int, nargs="*", default=None, help="training lengths T (default: all)")
    parser.add_argument("--batches", type=int, nargs="*", default=None, help="decode batch sizes (default: all)")
    parser.add_argument("--packed-length", type=int, default=None,
                        help="length of the packed-documents comparison (0 skips it; default 16384)")
    parser.add_argument("--selection-only", action="store_true",
                        help="only the windowed paths' selection stage at each length")
    parser.add_argument("--kernels", action="store_true",
                        help="also each training row's largest kernels by GPU time (CUDA; part 'kernels')")
    args = parser.parse_args(argv)
    run(args.out, quick=args.quick, device=args.device, lengths=args.lengths, batches=args.batches,
        packed_length=args.packed_length, selection_only=args.selection_only, kernels=args.kernels)


if __name__ == "__main__":
    main()
