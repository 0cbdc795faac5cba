"""Defect (error quality; worse on CUDA): generate(..., pad_token_id=P) with P outside [0, vocab_size) fails with a
bare `IndexError: index out of range in self` from the embedding as soon as one row finishes, instead of the
ValueError the model gives for such an id (`input_ids=[600, ...] is not allowed: token ids in [0, vocab_size=512)`).

Cause: CheemsForCausalLM.generate's premise (models/modeling.py:729-738, `_generated_step` :54-62) is that every
one-token step feeds back "ids picked from this model's logits", so CheemsModel.forward skips `check_token_ids` for
them (line 438). But HF feeds `pad_token_id` back for finished rows (next = next*unfinished + pad*(1-unfinished)),
and pad_token_id is the caller's value, never checked. On CUDA an out-of-range embedding index is a device-side
assert (the CUDA context is lost) rather than a Python error. pad_token_id=-1 is a value seen in the wild.

Run from the repository root: .venv/bin/python docs/results/session24/audit_gen/pad_token_out_of_vocab.py
"""
import warnings

import torch

import wonderful_matrices as wm
from wonderful_matrices.models import presets

warnings.filterwarnings("ignore")
torch.manual_seed(0)
m = wm.CheemsForCausalLM(presets.get("llama-tiny", initializer_range=0.3)).to(torch.float64).eval()
torch.manual_seed(8)
ids = torch.randint(1, 512, (3, 5))
with torch.no_grad():
    free = m.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
eos = int(free[0, 7])  # row 0 stops after 3 tokens, the other rows go on
print("free run:", free[:, 5:].tolist(), " eos chosen:", eos)
for pad in [511, 600, -1]:
    try:
        with torch.no_grad():
            out = m.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=pad, eos_token_id=eos)
        print(f"pad_token_id={pad}: ok {out[:, 5:].tolist()}")
    except Exception as e:  # noqa: BLE001
        print(f"pad_token_id={pad}: {type(e).__name__}: {str(e)[:120]}")
try:
    m(torch.tensor([[600]]))
except ValueError as e:
    print("the same id through a plain forward:", f"ValueError: {e}")
