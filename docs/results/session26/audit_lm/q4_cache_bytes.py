"""Q4: `analytic_cache_bytes` (the table's cache_bytes@1M) against real caches, every preset.

Each tiny preset (keep_window 8) in bfloat16 prefills C tokens through the model (use_cache=True, CPU: the dynamic
attention layout), then decodes 3 tokens; every tensor of the layers' states is counted (besides, the cache holds one int64
counter per row). The measured bytes at two contexts give a line a + b C; its value at 1M is compared
with `analytic_cache_bytes(config, 1M, 2)`, and at every measured context the bytes must equal the formula exactly.
The -base configs are checked the same way (their mixers at full width and depth; small vocabulary and FFNs).
Usage: PYTHONPATH=src python q4_cache_bytes.py
"""
import sys

import torch

from wonderful_matrices.bench.decode_common import analytic_cache_bytes
from wonderful_matrices.models import CheemsForCausalLM, presets


def cache_bytes(cache) -> int:
    """The layers' states (``CheemsCache.nbytes``); the cache's own counter (``real_tokens``, 8 bytes per row) is
    checked to be all else it holds."""
    assert cache.real_tokens.numel() * cache.real_tokens.element_size() == 8
    return cache.nbytes()


@torch.no_grad()
def measured(model, context: int) -> int:
    ids = torch.randint(1, model.config.vocab_size, (1, context))
    out = model(input_ids=ids[:, :-3], use_cache=True)
    cache = out.past_key_values
    for t in range(3):  # decoding steps: the layout a decoded context leaves
        out = model(input_ids=ids[:, context - 3 + t:context - 2 + t], past_key_values=cache, use_cache=True)
    return cache_bytes(cache)


def main() -> int:
    torch.set_num_threads(1)
    failures = 0
    for size, contexts in (("tiny", (24, 40, 72)), ("base", (24, 40))):
        for family in ("cheems", "doge", "llama", "mamba2", "jamba"):
            config = presets.get(f"{family}-{size}", use_cache=True)
            if size == "base":  # the base layer shapes and depth; a small vocabulary and FFNs (not in the cache)
                config = presets.get(f"{family}-base", use_cache=True, vocab_size=128, intermediate_size=64,
                                     moe_intermediate_size=16, moe_shared_intermediate_size=16,
                                     cdmoe_num_experts=16, cdmoe_top_k=2, cdmoe_num_heads=1)
            torch.manual_seed(0)
            model = CheemsForCausalLM(config).to(torch.bfloat16).eval()
            got = {c: measured(model, c) for c in contexts}
            formula = {c: analytic_cache_bytes(config, c, 2) for c in contexts}
            c0, c1 = contexts[-2], contexts[-1]
            slope = (got[c1] - got[c0]) / (c1 - c0)
            at_1m = got[c1] + slope * (2**20 - c1)
            ok = at_1m == analytic_cache_bytes(config, 2**20, 2) and got == formula
            failures += not ok
            print(f"{family}-{size} ({config.mixer_types.count('attn')} attn, {config.mixer_types.count('dma')} dma, "
                  f"{config.mixer_types.count('ssd')} ssd, {config.mixer_types.count('mamba2')} mamba2): measured "
                  + ", ".join(f"{c}: {got[c]} (formula {formula[c]})" for c in contexts)
                  + f"; extrapolated to 1M {at_1m:.0f} vs formula {analytic_cache_bytes(config, 2**20, 2)} "
                  f"{'OK' if ok else 'MISMATCH'}", flush=True)
    print("failures:", failures)
    return int(failures > 0)


if __name__ == "__main__":
    sys.exit(main())
