"""Session 19: compiled packed training at lm-scale's shapes (8 x 2048, documents), the presets with DMA."""
import sys, time
import numpy as np, torch
from wonderful_matrices.bench.lm_common import train_lm
from wonderful_matrices.models import presets
from wonderful_matrices.models.modeling import CheemsForCausalLM
rng = np.random.default_rng(0)
tokens = rng.integers(1, 8192, size=400_000).astype(np.int64)
tokens[rng.random(tokens.shape) < 1 / 400] = 0  # documents of ~400 tokens
for name in sys.argv[1:]:
    t = time.time()
    cfg = presets.get(name, vocab_size=8192)
    model = CheemsForCausalLM(cfg).cuda()
    try:
        stats = train_lm(model, tokens, 2048, 8, 5, 1e-3, torch.device("cuda"), eos=0, compiled=True)
        print(name, "ok", {k: stats[k] for k in ("final_loss", "tokens_per_s")}, f"{time.time() - t:.0f} s", flush=True)
    except Exception as e:
        print(name, "FAILED", type(e).__name__, str(e)[:300], flush=True)
