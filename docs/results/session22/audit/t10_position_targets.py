"""How much the tail difference in position.py's 1x/2x/4x targets moves perplexity: a small hybrid (QUICK size,
BPE 4096, briefly trained) scored in rows of 512 on all 80,896 targets (what ppl@1x/2x use) vs on the first
79,872 (what ppl@4x uses). One pass: per-target NLL by hand, then the two means."""
import tempfile
import math, time
import numpy as np, torch
torch.set_num_threads(2)
from wonderful_matrices.bench import position as P
from wonderful_matrices.bench.lm_common import corpus_tokens, train_lm
from wonderful_matrices.models import CheemsForCausalLM
corpus = corpus_tokens("shakespeare", 4096, tempfile.mkdtemp())
torch.manual_seed(0)
model = CheemsForCausalLM(P.hybrid_config("no_pe", P.QUICK, corpus.vocab_size))
t0 = time.time()
train_lm(model, corpus.train, 128, 16, 15, 3e-3, torch.device("cpu"))
print(f"trained 15 steps in {time.time() - t0:.0f}s")
val = torch.from_numpy(np.asarray(corpus.validation, dtype=np.int64))
L = 512
n_rows = (len(val) - 1) // L
nll = []
model.eval()
with torch.no_grad():
    for r0 in range(0, n_rows, 8):
        idx = torch.arange(r0, min(n_rows, r0 + 8))[:, None] * L + torch.arange(L + 1)
        rows = val[idx]
        lp = torch.log_softmax(model(input_ids=rows[:, :-1], use_cache=False).logits.float(), -1)
        nll.append(-lp.gather(-1, rows[:, 1:, None])[..., 0].reshape(-1))
nll = torch.cat(nll).double()
print(f"rows of 512: all {nll.numel()} targets ppl {math.exp(nll.mean()):.3f}; first 79872 ppl "
      f"{math.exp(nll[:79872].mean()):.3f}; last 1024 alone ppl {math.exp(nll[79872:].mean()):.3f}; "
      f"difference {100 * (math.exp(nll.mean() - nll[:79872].mean()) - 1):+.2f}% [{time.time() - t0:.0f}s]")
