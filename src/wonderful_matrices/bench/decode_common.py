"""Decoding measurements the ``lm`` and ``generate`` benchmarks share: the cache a context of ``C`` tokens
leaves, made without an O(C^2) prefill, and the tokens/s of one-token steps on it, eager and replayed from a
CUDA graph.

The cache at context ``C`` is made by a short real prefill followed by growing every attention-like layer's
key/value store to the length it would have after ``C`` tokens (``C`` for attention, ``min(C, keep_window)`` for
DMA) with random keys/values; SSD and Mamba2 states have a fixed size and are kept from the prefill.
"""
from __future__ import annotations

import torch

from ..layers.attention import static_state
from ..models.cache import ATTENTION_LIKE
from ..ops.dma import cache_state
from .common import device_events, time_callable


def analytic_cache_bytes(config, context: int, dtype_bytes: int, batch: int = 1) -> int:
    """Bytes of the decoding cache of ``config`` after ``context`` tokens: keys and values of attention/DMA
    layers at ``dtype_bytes`` per element (DMA bounded by ``keep_window``), with what each key carries besides —
    DMA's float32 bias and int64 position per key and KV head, attention's boolean mask per key; float32 SSM
    states; conv states at ``dtype_bytes``."""
    total = 0
    for kind in config.mixer_types:
        if kind in ATTENTION_LIKE:
            n = context if (kind == "attn" or config.keep_window is None) else min(context, config.keep_window)
            total += 2 * n * config.num_key_value_heads * config.head_dim * dtype_bytes
            total += n * config.num_key_value_heads * (4 + 8) if kind == "dma" else n  # bias, position / key mask
        elif kind == "ssd":
            total += config.ssd_num_heads * config.ssd_head_dim * config.ssd_state_size * 4
            if config.ssd_use_conv:
                conv_dim = (config.ssd_num_heads * config.ssd_head_dim
                            + 2 * config.ssd_num_groups * config.ssd_state_size)
                total += conv_dim * (config.ssd_conv_kernel - 1) * dtype_bytes
        elif kind == "mamba2":
            inner = config.mamba2_expand * config.hidden_size
            total += inner * config.mamba2_state_size * 4
            conv_dim = inner + 2 * config.mamba2_num_groups * config.mamba2_state_size
            total += conv_dim * (config.mamba2_conv_kernel - 1) * dtype_bytes
    return total * batch


def fill_cache(cache, config, context: int) -> None:
    """Make ``cache`` (a :class:`CheemsCache` after a short prefill) the size a ``context``-token context leaves:
    every attention-like layer holds ``context`` keys (attention) or ``min(context, keep_window)`` (DMA) of
    random keys/values (non-positive DMA biases, positions ``context - n .. context - 1``); recurrent states keep
    their fixed size and the prefill's values; the token counts say ``context``. A static attention cache keeps
    its preallocated layout (``layers.attention.static_state``)."""
    for idx, kind in enumerate(config.mixer_types):
        if kind not in ATTENTION_LIKE:
            continue
        state = cache.layer_state(idx)
        b, _, hkv, d = state["key"].shape
        like = dict(dtype=state["key"].dtype, device=state["key"].device)
        n = context if (kind == "attn" or config.keep_window is None) else min(context, config.keep_window)
        key, value = torch.randn(b, n, hkv, d, **like), torch.randn(b, n, hkv, d, **like)
        if kind == "dma":
            bias = -torch.randn(b, n, hkv, device=like["device"]).abs()
            position = torch.arange(context - n, context, device=like["device"]).view(1, n, 1).expand(b, n, hkv)
            state.update(cache_state(key, value, bias, position))
        else:
            key_mask = torch.ones(b, n, dtype=torch.bool, device=like["device"])
            if cache.static_attention:  # preallocated buffers (reserve sets every attention layer's capacity)
                cache.reserve(context)
                state.update(static_state(key, value, key_mask, state["capacity"]))
            else:
                state.update(key=key, value=value, key_mask=key_mask)
    cache.real_tokens = torch.full((cache.batch_size,), context, dtype=torch.long, device=cache.real_tokens.device)
    cache.set_seen_tokens(context)


def step_launches(step, device: torch.device) -> tuple[int, str]:
    """How much one call of ``step`` (a decoding step) dispatches: on CUDA the device kernels (and memory copies
    or sets) the profiler records, ``(count, "cuda kernels")``; elsewhere the ATen operators dispatched that are
    not views, ``(count, "aten ops")`` — the kernel count of the same step on a GPU, up to the fused paths that
    only CUDA takes."""
    if device.type == "cuda":
        return len(device_events(step, device)), "cuda kernels"
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:
                self.ops += 1
            return func(*args, **(kwargs or {}))

    with Count() as counter:
        step()
    return counter.ops, "aten ops"


def decode_measurement(model, config, context: int, device: torch.device, reps: int, prefill: int = 16,
                       batch: int = 1) -> dict:
    """Decode tokens/s and cache bytes of ``batch`` rows at ``context`` tokens of context (see the module
    docstring); tokens/s count every row (aggregate throughput). On CUDA also the tokens/s of the same steps
    replayed from a CUDA graph (:class:`GraphedDecoder`), None where the cache keeps growing (attention), and the
    peak memory allocated while decoding (``decode_peak_memory_gb``: weights, cache and activations).
    ``decode_launches``: what one eager step dispatches (:func:`step_launches`; ``launch_unit`` says what).
    Rows get ``status`` ``"does not fit"`` when the analytic cache (twice, for the copy a growing cache makes)
    exceeds the free memory; ``torch.OutOfMemoryError`` propagates."""
    from ..models import CheemsCache, GraphedDecoder

    dtype_bytes = next(model.parameters()).element_size()
    analytic = analytic_cache_bytes(config, context, dtype_bytes, batch)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free
        torch.cuda.reset_peak_memory_stats(device)
    else:
        budget = 4 << 30
    row = {"context": context, "decode_batch": batch, "cache_bytes_analytic": analytic}
    if 2.2 * analytic > budget:
        row.update(decode_tokens_per_s=None, cache_bytes_measured=None, status="does not fit")
        return row
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, config.vocab_size, (batch, prefill), generator=gen).to(device)
    cache = CheemsCache(config)
    with torch.no_grad():
        model(input_ids=prompt, past_key_values=cache, use_cache=True)
        fill_cache(cache, config, context)
        measured = cache.nbytes()
        token = prompt[:, -1:]

        def step():
            model(input_ids=token, past_key_values=cache, use_cache=True, graphed_decoding=False)

        ms = time_callable(step, device, warmup=2, reps=reps)
        launches, unit = step_launches(step, device)
        row.update(decode_tokens_per_s=batch * 1e3 / ms, cache_bytes_measured=measured, status="ok",
                   decode_launches=launches, launch_unit=unit)
        if device.type == "cuda":  # the same steps replayed from a CUDA graph, where the cache allows it
            decoder = GraphedDecoder(model, cache)
            graph_ms = time_callable(lambda: decoder.step(token), device, warmup=3, reps=reps)
            row["decode_graph_tokens_per_s"] = batch * 1e3 / graph_ms if decoder.recorded else None
            row["graph"] = "recorded" if decoder.recorded else (decoder.failed or "cache not steady")
            row["decode_peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row
