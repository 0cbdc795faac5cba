"""Matrix-multiply FLOPs per token of a training step (forward + backward) of each preset.

Counted by ``torch.utils.flop_counter.FlopCounterMode`` on the CPU, where every op runs its torch backend: matrix
products, attention and convolutions count, elementwise and gather/scatter work (CDMoE's expert retrieval) does
not. torch has no formula for the CPU flash-attention ops; this module registers one (torch's SDPA count, halved
when causal: the part a causal kernel computes). DMA runs masked, not causal, SDPA on the CPU, so it counts every
key. It answers one question: does a model train slower than another because it computes more?

    wm bench flops --out DIR [--quick]     # the five -base presets at 4096 tokens (--quick: -tiny at 128)
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

from .common import write_results

FAMILIES = ("llama", "cheems", "doge", "mamba2", "jamba")


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_flash_attention(query_shape, key_shape, value_shape, dropout_p=0.0, is_causal=False, *args, out_shape=None,
                         **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape) // (2 if is_causal else 1)


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _cpu_flash_attention_backward(grad_out_shape, query_shape, key_shape, value_shape, out_shape_, logsumexp_shape,
                                  dropout_p=0.0, is_causal=False, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape) // (2 if is_causal else 1)


def flops_per_token(name: str, seq_len: int) -> tuple[float, float]:
    """(parameters in millions, forward + backward GFLOP per token) of preset ``name`` on one row of ``seq_len``
    tokens, counted on the CPU."""
    from ..models import CheemsForCausalLM, presets

    config = presets.get(name, use_cache=False)
    torch.manual_seed(0)
    model = CheemsForCausalLM(config)
    ids = torch.randint(0, config.vocab_size, (1, seq_len))
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=ids, labels=ids).loss.backward()
    return sum(p.numel() for p in model.parameters()) / 1e6, counter.get_total_flops() / seq_len / 1e9


def run(out_dir, quick: bool = False, device=None, seq_len: int | None = None, presets=None) -> list[dict]:
    """Count the training FLOPs per token of ``presets`` (default: every family at ``-base``, ``-tiny`` with
    ``quick``) on rows of ``seq_len`` tokens (default 4096, 128 with ``quick``); write ``results.json`` /
    ``results.md`` into ``out_dir``; return one row per preset. The count runs on the CPU whatever ``device``."""
    seq_len = seq_len if seq_len is not None else (128 if quick else 4096)
    if not (isinstance(seq_len, int) and seq_len >= 1):
        raise ValueError(f"seq_len={seq_len!r} is not allowed: an int >= 1")
    if isinstance(presets, str):  # the command line's comma-separated list
        presets = [name for name in presets.split(",") if name]
    names = list(presets) if presets is not None else [f"{f}-{'tiny' if quick else 'base'}" for f in FAMILIES]
    rows = []
    for name in names:
        params, gflop = flops_per_token(name, seq_len)
        rows.append({"preset": name, "params_m": params, "gflop_per_token": gflop, "seq_len": seq_len})
        print(rows[-1], flush=True)
    meta = dict(quick=quick, seq_len=seq_len, device="cpu",
                note="forward + backward FLOPs per token of matrix products, attention and convolutions "
                     "(torch.utils.flop_counter on the CPU; causal attention halved)")
    table = write_results(out_dir, "flops", rows, meta, ["preset", "params_m", "gflop_per_token", "seq_len"])
    print(table)
    return rows
