"""Defect: on the graphed decoding path (the default on CUDA; `graphed_decoding=True` routes the same code eagerly on
the CPU), `generate`'s decoding steps ignore the position_ids that generate passes, so a caller's position_ids
(e.g. continuing a document at an offset) are used for the prompt but not for the generated tokens.

`_graphable_step` (models/modeling.py:703-727) skips the "position_ids equal cache.real_tokens" check for generate's
own steps (`generated=True`, line 723), and `GraphedDecoder._eager` (models/graph_decode.py:101-103) then calls the
model with no position_ids, so RoPE / DMA positions come from the cache's token count instead.
Eager decoding (graphed_decoding=False) honours them and equals a full forward with the same positions.

Run from the repository root: .venv/bin/python docs/results/session24/audit_gen/graphed_steps_ignore_position_ids.py
"""
import warnings

import torch

import wonderful_matrices as wm
from wonderful_matrices.models import presets

warnings.filterwarnings("ignore")
N, OFFSET = 6, 100


def build(family, **over):
    torch.manual_seed(0)
    return wm.CheemsForCausalLM(presets.get(f"{family}-tiny", initializer_range=0.3, **over)).to(torch.float64).eval()


def rel(a, b):
    return float((a - b).norm() / b.norm())


torch.manual_seed(4)
ids = torch.randint(1, 512, (1, 8))
positions = torch.arange(8)[None] + OFFSET
print(f"prompt of 8 tokens at positions {OFFSET}..{OFFSET + 7}; reference = full forward (no cache) on the growing "
      f"sequence with positions {OFFSET}.. ; logits from generate are HF's float32 copies (3e-8 = rounding)\n")
for family in ["cheems", "llama", "jamba", "doge", "mamba2"]:
    for graphed in [False, True]:
        m = build(family, graphed_decoding=graphed)
        with torch.no_grad():
            out = m.generate(ids, position_ids=positions, max_new_tokens=N, do_sample=False, pad_token_id=0,
                             output_logits=True, return_dict_in_generate=True)
            seq, steps = ids.clone(), []
            for _ in range(N):
                lg = m(seq, position_ids=torch.arange(seq.shape[1])[None] + OFFSET, use_cache=False).logits[:, -1]
                steps.append(lg)
                seq = torch.cat([seq, lg.argmax(-1, keepdim=True)], 1)
        errs = [rel(a.double(), b) for a, b in zip(out.logits, steps)]
        print(f"{family:7s} graphed_decoding={graphed!s:5s}: tokens equal reference: {torch.equal(out.sequences, seq)!s:5s} "
              f"per-step logits rel err: {' '.join(f'{e:.0e}' for e in errs)}")
print("\n(mamba2 has no positions, so it is unaffected)")
