"""bench/flops.py counts what a hand count gives: 6 FLOPs per weight of every linear layer (forward 2,
backward 4) plus causal attention (forward 4·L·h·d halved, backward 2.5x the forward) per token."""
import json

import torch

import wonderful_matrices as wm
from wonderful_matrices.bench import flops, run_benchmark


def test_llama_tiny_training_flops_match_the_hand_count():
    seq_len = 128
    config = wm.presets.get("llama-tiny", use_cache=False)
    model = wm.CheemsForCausalLM(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = config.num_hidden_layers * 7 * seq_len * config.num_attention_heads * config.head_dim
    params_m, gflop = flops.flops_per_token("llama-tiny", seq_len)
    assert abs(params_m * 1e6 - sum(p.numel() for p in model.parameters())) < 0.5
    assert abs(gflop * 1e9 - (6 * linear + attention)) < 1.0


def test_flops_runs_from_the_registry(tmp_path):
    rows = run_benchmark("flops", tmp_path, quick=True, seq_len=16, presets=["llama-tiny", "mamba2-tiny"])
    assert [r["preset"] for r in rows] == ["llama-tiny", "mamba2-tiny"]
    assert all(r["gflop_per_token"] > 0 and r["seq_len"] == 16 for r in rows)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["preset"] for r in saved["rows"]] == ["llama-tiny", "mamba2-tiny"]
