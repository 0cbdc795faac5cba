"""Which training mode gives NaN at lm-scale's settings (issue #15, session 23: every graphed + compiled run ended
with loss NaN)? Tiny presets, packed rows with an EOS (as lm-scale trains) or none, each of the four modes of
``bench.lm_common.train_lm``; prints the final loss and whether any weight is not finite."""
import sys

import numpy as np
import torch

from wonderful_matrices.bench.lm_common import train_lm
from wonderful_matrices.bench.lm_scale import run_model
from wonderful_matrices.models import CheemsForCausalLM

device = torch.device("cuda")
presets = sys.argv[1].split(",") if len(sys.argv) > 1 else ["llama", "cheems"]
size = sys.argv[2] if len(sys.argv) > 2 else "tiny"
seq_len, steps = (256, 10) if size == "tiny" else (2048, 40)
rng = np.random.default_rng(0)
tokens = rng.integers(1, 512, 400_000)
tokens[rng.random(len(tokens)) < 1 / 300] = 0  # EOS = 0: documents of ~300 tokens
for family in presets:
    for eos in (0, None):
        for compiled, graphed in ((False, False), (False, True), (True, False), (True, True)):
            if eos is None and not graphed:
                continue
            _, config = run_model(family, size, vocab_size=512, use_cache=False)
            torch.manual_seed(0)
            model = CheemsForCausalLM(config).to(device)
            try:
                stats = train_lm(model, tokens, seq_len, 8, steps, 1e-3, device, eos=eos, compiled=compiled, graphed=graphed)
                bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
                print(f"{family}-{size} eos={eos} compiled={compiled} graphed={graphed}: final loss "
                      f"{stats['final_loss']:.4f} graphed={stats['graphed']} err={stats['graph_error']} "
                      f"non-finite weights {len(bad)} {bad[:3]}", flush=True)
            except Exception as error:  # noqa: BLE001
                print(f"{family}-{size} eos={eos} compiled={compiled} graphed={graphed}: {type(error).__name__}: "
                      f"{str(error)[:300]}", flush=True)
