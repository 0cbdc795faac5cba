"""scripts/model_flops.py counts what a hand count gives: 6 FLOPs per weight of every linear layer (forward 2,
backward 4) plus causal attention (forward 4·L·h·d halved, backward 2.5x the forward) per token."""
import importlib.util
from pathlib import Path

import torch

import wonderful_matrices as wm


def test_llama_tiny_training_flops_match_the_hand_count():
    spec = importlib.util.spec_from_file_location("model_flops", Path(__file__).parents[1] / "scripts" / "model_flops.py")
    model_flops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model_flops)
    seq_len = 128
    config = wm.presets.get("llama-tiny", use_cache=False)
    model = wm.CheemsForCausalLM(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = config.num_hidden_layers * 7 * seq_len * config.num_attention_heads * config.head_dim
    params_m, gflop = model_flops.flops_per_token("llama-tiny", seq_len)
    assert abs(params_m * 1e6 - sum(p.numel() for p in model.parameters())) < 0.5
    assert abs(gflop * 1e9 - (6 * linear + attention)) < 1.0
