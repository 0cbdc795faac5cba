"""Defect: with HF's chunked prefill (`generate(..., prefill_chunk_size=1)`), the prompt's one-token chunks after the
first are taken for tokens the model generated itself, so left padding in them is treated as real tokens.

`_generated_step` (models/modeling.py:54-62) flags every forward call after generate's first one whose input is
(b, 1) on a filled CheemsCache. HF's `_prefill` with `prefill_chunk_size=1` makes exactly such calls for the prompt.
For a flagged call CheemsModel.forward drops the attention mask (`new_mask = None if generated_step`, line 482) and
skips the token-id check (line 438): padded positions are attended / folded into the SSD state as real tokens and
counted in `cache.real_tokens`; an out-of-vocabulary prompt id gives a bare IndexError instead of the ValueError.

Expected: each row of a left-padded batch generates what that prompt generates alone (it does with
prefill_chunk_size None/2/3, and with the library's own `prefill_chunk_tokens`).

Run from the repository root: .venv/bin/python docs/results/session24/audit_gen/hf_prefill_chunk_padding.py
"""
import warnings

import torch

import wonderful_matrices as wm
from wonderful_matrices.models import presets

warnings.filterwarnings("ignore")
N = 5


def build(family):
    torch.manual_seed(0)
    return wm.CheemsForCausalLM(presets.get(f"{family}-tiny", initializer_range=0.3)).to(torch.float64).eval()


@torch.no_grad()
def manual_greedy(m, ids, n):
    """Full forward (no cache) on the growing sequence: tokens and last-position logits of each step."""
    seq, steps = ids.clone(), []
    for _ in range(n):
        lg = m(seq, use_cache=False).logits[:, -1]
        steps.append(lg)
        seq = torch.cat([seq, lg.argmax(-1, keepdim=True)], 1)
    return seq, steps


def rel(a, b):
    return float((a - b).norm() / b.norm())


torch.manual_seed(2)
lens = [3, 7]
prompts = [torch.randint(1, 512, (L,)) for L in lens]
W = max(lens)
ids = torch.zeros(2, W, dtype=torch.long)
mask = torch.zeros_like(ids)
for i, p in enumerate(prompts):
    ids[i, W - len(p):] = p
    mask[i, W - len(p):] = 1
print("left-padded batch, row 0 has", W - lens[0], "pads; row 1 none\n")

for family in ["cheems", "llama", "mamba2", "jamba", "doge"]:
    m = build(family)
    refs = [manual_greedy(m, p[None], N) for p in prompts]
    line = []
    for pcs in [None, 1, 2, 3]:
        with torch.no_grad():
            out = m.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False, pad_token_id=0,
                             prefill_chunk_size=pcs, output_logits=True, return_dict_in_generate=True)
        cells = []
        for i, (ref, steps) in enumerate(refs):
            same = torch.equal(out.sequences[i, W:], ref[0, len(prompts[i]):])
            err = max(rel(out.logits[t][i].double(), steps[t][0]) for t in range(N))
            cells.append(f"row{i}: tokens {'==' if same else '!='} alone, logits rel err {err:.0e}")
        line.append(f"  prefill_chunk_size={pcs}: " + "; ".join(cells))
    print(family)
    print("\n".join(line))

print("\nout-of-vocabulary id 600 in the prompt (vocab 512):")
m = build("llama")
for pcs in [None, 1]:
    try:
        with torch.no_grad():
            m.generate(torch.tensor([[5, 6, 600, 7]]), max_new_tokens=2, do_sample=False, pad_token_id=0,
                       prefill_chunk_size=pcs)
        print(f"  prefill_chunk_size={pcs}: no error")
    except Exception as e:  # noqa: BLE001
        print(f"  prefill_chunk_size={pcs}: {type(e).__name__}: {str(e)[:100]}")
