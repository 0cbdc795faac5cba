"""position.py: (a) variants differ only in SSD position handling; (b) targets scored at 1x/2x/4x."""
import tempfile
import numpy as np, torch
torch.set_num_threads(1)
from wonderful_matrices.bench import position as P
from wonderful_matrices.bench.lm_common import corpus_tokens, packed_inputs

cfgs = {v: P.hybrid_config(v, P.FULL, 4096).to_dict() for v in P.VARIANTS}
keys = sorted(set().union(*cfgs.values()))
print("config fields that differ between variants:")
for k in keys:
    vals = {v: cfgs[v].get(k) for v in cfgs}
    if len({repr(x) for x in vals.values()}) > 1:
        print("  ", k, vals)
print("mixer_types:", cfgs["rope"]["mixer_types"])
from wonderful_matrices.models import CheemsForCausalLM
for v in P.VARIANTS:
    m = CheemsForCausalLM(P.hybrid_config(v, P.QUICK, 512))
    print(f"  {v:6s} params {sum(p.numel() for p in m.parameters())}")

corpus = corpus_tokens("shakespeare", 4096, tempfile.mkdtemp())
val = corpus.validation
N = len(val)
print("validation tokens", N, "EOS count", int((np.asarray(val) == corpus.eos).sum()))
for name, seq_len, eval_tokens in (("FULL", 512, P.FULL["eval_tokens"]), ("QUICK", 128, P.QUICK["eval_tokens"])):
    usable = N if eval_tokens is None else min(N, eval_tokens)
    sets = {}
    for f in P.EVAL_FACTORS:
        L = seq_len * f
        n_rows = (usable - 1) // L
        sets[f] = n_rows * L
    print(f"{name} (vocab 4096 corpus; QUICK uses BPE 512 but only the count matters): targets scored at "
          + ", ".join(f"{f}x={sets[f]}" for f in P.EVAL_FACTORS) + f"  (usable {usable})")
