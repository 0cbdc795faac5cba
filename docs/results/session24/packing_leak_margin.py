"""How far the packed-row loss of tests/bench/test_bench_packing.py lies from the same row scored without the
packing convention, per parametrization (the size of the "documents leak" the test asserts): on the current code.
Run from the repository root: PYTHONPATH=tests:tests/bench .venv/bin/python docs/results/session24/packing_leak_margin.py"""
import torch

import test_bench_packing as t
from wonderful_matrices.bench import lm_common
from wonderful_matrices.models import presets

for name in ["cheems-tiny", "llama-tiny"]:
    for fused in [True, False]:
        torch.manual_seed(0)
        model = t.build_model(presets.get(name, vocab_size=64)).double()
        lm_common.set_fused(model, fused)
        rows, _ = t._row(64, [21, 1, 9, 5])
        rows = rows[:, :-3]
        packed, plain = lm_common.lm_loss(model, rows, t.EOS).item(), lm_common.lm_loss(model, rows, None).item()
        print(f"{name} fused={fused}: packed {packed:.6f} unpacked {plain:.6f} relative {abs(packed - plain) / packed:.2e}")
