"""Generation speed: decoding at long context, batched throughput, long-prompt prefill, and Hugging Face's own
``LlamaForCausalLM`` as the external anchor, side by side in one run (issue 18).

Every preset gets random weights of its configuration (speed does not depend on training), bf16 on CUDA and
float32 elsewhere. Measured, per preset:

* ``decode``: batch-1 tokens/s of one-token steps after ``C`` tokens of context, eager and replayed from a CUDA
  graph (:class:`GraphedDecoder`, CUDA only; None where the cache keeps growing), for ``C`` in 4K, 128K, 1M, and
  ``launches_per_step``: the device kernels of one step on CUDA, the non-view ATen ops elsewhere
  (``launch_unit``; :func:`.decode_common.step_launches`). The
  cache at context ``C`` is made as :mod:`.decode_common` describes (no O(C^2) prefill).
* ``batch``: aggregate decode tokens/s (all rows) for batch 1, 2, 4 ... 256 at one context (64K), with the peak
  memory, until the cache does not fit or memory runs out.
* ``prefill``: tokens/s of a real prompt of 4K and 128K tokens into an empty cache (chunked by
  ``prefill_chunk_tokens``; only the last position's logits), with the peak memory.
* ``hf-llama``: ``transformers.LlamaForCausalLM`` of the llama preset's shape (SDPA) decoding one token at the same
  contexts: with its dynamic cache (eager), and with a static cache, eager and, on CUDA,
  ``torch.compile(mode="reduce-overhead")`` (the failure is recorded where it does not work).

``quick`` runs the ``-tiny`` presets at small sizes on the CPU (seconds; a test runs it).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .common import peak_memory_bytes, time_callable, write_results
from .decode_common import decode_measurement

QUICK = dict(size="tiny", contexts=(64, 256), batch_context=128, batches=(1, 4, 16), prefill_lengths=(64, 256),
             prefill_chunk_tokens=64, reps=3)
FULL = dict(size="base", contexts=(4096, 131072, 1048576), batch_context=65536,
            batches=(1, 2, 4, 8, 16, 32, 64, 128, 256), prefill_lengths=(4096, 131072), prefill_chunk_tokens=8192,
            reps=20)
FAMILIES = ("cheems", "mamba2", "llama")
COLUMNS = ["preset", "measure", "context", "batch", "tokens_per_s", "graph_tokens_per_s", "launches_per_step",
           "launch_unit", "peak_memory_gb",
           "cache_mb", "status"]


def prefill_measurement(model, config, length: int, device: torch.device, reps: int) -> dict:
    """Tokens/s of a random ``length``-token prompt (batch 1) into an empty :class:`CheemsCache` (the model's
    ``prefill_chunk_tokens`` applies; logits of the last position only), and the peak memory on CUDA."""
    from ..models import CheemsCache

    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, config.vocab_size, (1, length), generator=gen).to(device)

    def prefill():
        with torch.no_grad():
            model(input_ids=prompt, past_key_values=CheemsCache(config), use_cache=True, logits_to_keep=1)

    ms = time_callable(prefill, device, warmup=1, reps=reps)
    peak = peak_memory_bytes(prefill, device)
    return {"measure": "prefill", "context": length, "batch": 1, "tokens_per_s": length * 1e3 / ms,
            "peak_memory_gb": None if peak is None else peak / 2**30, "status": "ok"}


def _decode_row(d: dict) -> dict:
    """A :func:`decode_measurement` result in this benchmark's columns (its own keys kept too)."""
    return {**d, "batch": d["decode_batch"], "tokens_per_s": d["decode_tokens_per_s"],
            "graph_tokens_per_s": d.get("decode_graph_tokens_per_s"), "peak_memory_gb": d.get("decode_peak_memory_gb"),
            "launches_per_step": d.get("decode_launches"), "launch_unit": d.get("launch_unit"),
            "cache_mb": d["cache_bytes_analytic"] / 2**20}


def _out_of_memory(device: torch.device, **row) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {**row, "tokens_per_s": None, "status": "does not fit (OOM)"}


def hf_llama_config(config):
    """A ``transformers.LlamaConfig`` of the same shape as a llama preset's :class:`CheemsConfig` (SDPA)."""
    from transformers import LlamaConfig

    hf = LlamaConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                     intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
                     num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
                     head_dim=config.head_dim, rope_theta=config.rope_theta, rms_norm_eps=config.rms_norm_eps,
                     tie_word_embeddings=config.tie_word_embeddings, attention_bias=config.attention_bias,
                     max_position_embeddings=1 << 21)
    hf._attn_implementation = "sdpa"
    return hf


def hf_llama_decode(model, context: int, device: torch.device, reps: int, cache_kind: str,
                    compile_step: bool = False) -> dict:
    """Batch-1 tokens/s of ``model`` (a ``LlamaForCausalLM``) decoding one token after ``context`` tokens, its
    cache (``cache_kind`` ``"dynamic"`` or ``"static"``) filled with random keys/values; ``compile_step``: the
    step under ``torch.compile(mode="reduce-overhead")`` (static cache only). A step that raises is recorded
    in ``status``."""
    from transformers import DynamicCache, StaticCache

    from ..models.modeling import CACHE_NAME

    hf = model.config
    like = dict(dtype=next(model.parameters()).dtype, device=device)
    label = f"{cache_kind} cache" + (", compiled" if compile_step else "")
    row = {"preset": "hf-llama", "measure": "decode", "context": context, "batch": 1, "implementation": label}
    warmup = 3
    # a static cache holds the context and every step the measurement runs (each step appends its token)
    cache = (DynamicCache(config=hf) if cache_kind == "dynamic"
             else StaticCache(config=hf, max_cache_len=context + warmup + reps))
    for layer in range(hf.num_hidden_layers):
        shape = (1, hf.num_key_value_heads, context, hf.head_dim)
        cache.update(torch.randn(shape, **like), torch.randn(shape, **like), layer,
                     {"cache_position": torch.arange(context, device=device)})
    token = torch.tensor([[3]], device=device)
    forward = torch.compile(model, mode="reduce-overhead", fullgraph=True) if compile_step else model

    def step():
        with torch.no_grad():
            forward(input_ids=token, use_cache=True, **{CACHE_NAME: cache})

    try:
        ms = time_callable(step, device, warmup=warmup, reps=reps)
    except torch.OutOfMemoryError:
        return _out_of_memory(device, **row)
    except Exception as exc:  # noqa: BLE001 - an anchor path that does not work here is a result, not a crash
        return {**row, "tokens_per_s": None, "status": f"failed: {type(exc).__name__}: {str(exc)[:160]}"}
    return {**row, "tokens_per_s": 1e3 / ms, "status": "ok"}


def run(out_dir, quick: bool = False, device=None, presets: str | None = None, contexts=None, batches=None,
        batch_context: int | None = None, prefill_lengths=None, reps: int | None = None,
        anchor: bool = True) -> list[dict]:
    """Measure every preset of ``presets`` (comma-separated names; default cheems, mamba2 and llama of the size
    class: ``-tiny`` with ``quick``, ``-base`` otherwise) and the HF Llama anchor; write ``results.json`` and
    ``results.md`` into ``out_dir``; return the rows (columns ``COLUMNS``; decode rows also keep
    ``decode_tokens_per_s``/``decode_graph_tokens_per_s``). ``contexts``, ``batches``, ``batch_context``,
    ``prefill_lengths``, ``reps`` override the defaults; ``anchor=False`` skips ``LlamaForCausalLM``."""
    from transformers import LlamaForCausalLM

    from ..models import CheemsForCausalLM
    from ..models import presets as preset_registry

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = dict(QUICK if quick else FULL)
    for key, value in (("contexts", contexts), ("batches", batches), ("batch_context", batch_context),
                       ("prefill_lengths", prefill_lengths), ("reps", reps)):
        if value is not None:
            cfg[key] = value
    if cfg["reps"] < 1:
        raise ValueError(f"reps={cfg['reps']!r} is not allowed: must be >= 1")
    names = (presets.split(",") if isinstance(presets, str) else list(presets) if presets
             else [f"{f}-{cfg['size']}" for f in FAMILIES])
    for name in names:
        if name not in preset_registry.names():
            raise ValueError(f"presets={name!r} is not allowed: one of {preset_registry.names()}")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    start = time.perf_counter()
    rows = []
    for name in names:
        config = preset_registry.get(name, use_cache=True, prefill_chunk_tokens=cfg["prefill_chunk_tokens"])
        torch.manual_seed(0)
        model = CheemsForCausalLM(config).to(device=device, dtype=dtype).eval()
        for context in cfg["contexts"]:
            try:
                row = _decode_row(decode_measurement(model, config, context, device, cfg["reps"]))
            except torch.OutOfMemoryError:
                row = _out_of_memory(device, context=context, batch=1)
            rows.append({"preset": name, "measure": "decode", **row})
        for batch in cfg["batches"]:
            try:
                row = _decode_row(decode_measurement(model, config, cfg["batch_context"], device, cfg["reps"],
                                                     batch=batch))
            except torch.OutOfMemoryError:
                row = _out_of_memory(device, context=cfg["batch_context"], batch=batch)
            rows.append({"preset": name, "measure": "batch", **row})
            if row["status"] != "ok":
                break
        for length in cfg["prefill_lengths"]:
            try:
                row = prefill_measurement(model, config, length, device, max(1, cfg["reps"] // 4))
            except torch.OutOfMemoryError:
                row = _out_of_memory(device, measure="prefill", context=length, batch=1)
            rows.append({"preset": name, **row})
        for row in rows:
            if row["preset"] == name:
                _print(row)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    llama = [n for n in names if n.startswith("llama-")]
    if anchor and llama:
        torch.manual_seed(0)
        hf = LlamaForCausalLM(hf_llama_config(preset_registry.get(llama[0]))).to(device=device, dtype=dtype).eval()
        variants = [("dynamic", False), ("static", False)] + ([("static", True)] if device.type == "cuda" else [])
        for context in cfg["contexts"]:
            for cache_kind, compiled in variants:
                row = hf_llama_decode(hf, context, device, cfg["reps"], cache_kind, compiled)
                rows.append(row)
                _print(row)
        del hf
    total_s = time.perf_counter() - start
    meta = {"quick": quick, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
            "weights": "random (speed only)", "decode": "one token per step on a cache the size a context of "
            "`context` tokens leaves (bench/decode_common.py); tokens/s count every row of the batch",
            "prefill": f"a random prompt into an empty cache, prefill_chunk_tokens={cfg['prefill_chunk_tokens']}, "
                       "logits of the last position", "hf-llama": f"LlamaForCausalLM of {llama[0] if llama else '—'}"
            "'s shape, SDPA, random cache of `context` tokens", "reps": cfg["reps"], "wall_s": round(total_s, 1)}
    write_results(out_dir, "generate", rows, meta, columns=COLUMNS + ["implementation"])
    print(f"generate: {len(rows)} rows in {total_s:.1f} s -> {Path(out_dir)}")
    return rows


def _print(row: dict) -> None:
    tps, graph = row.get("tokens_per_s"), row.get("graph_tokens_per_s")
    print(f"{row['preset']:14s} {row['measure']:8s} {row.get('implementation', ''):24s} context {row['context']:8d} "
          f"batch {row['batch']:4d}: " + (f"{tps:.1f} tok/s" if tps else row["status"])
          + (f", graphed {graph:.1f} tok/s" if graph else "")
          + (f", {row['launches_per_step']} {row['launch_unit']} per step" if row.get("launches_per_step") else ""),
          flush=True)
