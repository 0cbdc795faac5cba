"""Matrix-multiply FLOPs per token of a training step (forward + backward) of each ``-base`` preset.

    python scripts/model_flops.py [SEQ_LEN] [PRESET ...]      # default 4096, the five -base presets

Counted by ``torch.utils.flop_counter.FlopCounterMode`` on the CPU, where every op runs its torch backend: matrix
products, attention and convolutions count, elementwise and gather/scatter work (CDMoE's expert retrieval) does
not. torch has no formula for the CPU flash-attention ops; this script registers one (torch's SDPA count, halved
when causal: the part a causal kernel computes). DMA runs masked, not causal, SDPA on the CPU, so it counts every
key. It answers one question: does a model train slower than another because it computes more?
"""
from __future__ import annotations

import sys

import torch
from torch.utils.flop_counter import (FlopCounterMode, register_flop_formula, sdpa_backward_flop_count,
                                      sdpa_flop_count)

import wonderful_matrices as wm


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_flash_attention(query_shape, key_shape, value_shape, dropout_p=0.0, is_causal=False, *args, out_shape=None,
                         **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape) // (2 if is_causal else 1)


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _cpu_flash_attention_backward(grad_out_shape, query_shape, key_shape, value_shape, out_shape_, logsumexp_shape,
                                  dropout_p=0.0, is_causal=False, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape) // (2 if is_causal else 1)


def flops_per_token(name: str, seq_len: int) -> tuple[float, float]:
    """(parameters in millions, forward + backward GFLOP per token) of preset ``name`` on one row of ``seq_len``."""
    config = wm.presets.get(name, use_cache=False)
    torch.manual_seed(0)
    model = wm.CheemsForCausalLM(config)
    ids = torch.randint(0, config.vocab_size, (1, seq_len))
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=ids, labels=ids).loss.backward()
    return sum(p.numel() for p in model.parameters()) / 1e6, counter.get_total_flops() / seq_len / 1e9


def main(argv: list[str]) -> None:
    seq_len = int(argv[0]) if argv else 4096
    names = argv[1:] or ["llama-base", "cheems-base", "doge-base", "mamba2-base", "jamba-base"]
    print(f"| preset | params | fwd+bwd GFLOP/token @{seq_len} |\n|---|---|---|")
    for name in names:
        params, gflop = flops_per_token(name, seq_len)
        print(f"| {name} | {params:.1f}M | {gflop:.3f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
