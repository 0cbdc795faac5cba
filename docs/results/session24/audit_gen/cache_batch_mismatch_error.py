"""Defect (error quality, docs/design.md's contract "raise ValueError naming the argument, the value and what is allowed —
never a deep shape error"): a CheemsCache filled with batch B used with another batch size gives a deep RuntimeError
from inside a layer (torch.cat / expand), or a ValueError about an op's `state.shape`/`initial_state.shape` that the
user never passed, instead of one ValueError about the cache.

CheemsModel.forward (models/modeling.py:470 onward) never compares `cache.batch_size` with the call's batch.
A common way to hit it: generate(..., past_key_values=<cache of a batch-1 prompt>, num_beams=3 or
num_return_sequences=2) — generate expands the prompt but not the user's cache (HF's own Llama fails there too,
also with a deep RuntimeError; there the message quality is HF's, here it is the library's documented contract).

Run from the repository root: .venv/bin/python docs/results/session24/audit_gen/cache_batch_mismatch_error.py
"""
import warnings

import torch

import wonderful_matrices as wm
from wonderful_matrices.models import presets
from wonderful_matrices.models.cache import CheemsCache

warnings.filterwarnings("ignore")


def build(family):
    torch.manual_seed(0)
    return wm.CheemsForCausalLM(presets.get(f"{family}-tiny")).eval()


def attempt(fn):
    try:
        fn()
        return "no error"
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"


for family in ["cheems", "llama", "mamba2", "jamba", "doge"]:
    m = build(family)
    print(f"== {family}")
    for new_batch in (3, 1):
        cache = CheemsCache(m.config)
        with torch.no_grad():
            m(torch.randint(1, 512, (2, 6)), past_key_values=cache, use_cache=True)
            print(f"  cache of batch 2, forward with batch {new_batch}: " + attempt(
                lambda: m(torch.randint(1, 512, (new_batch, 1)), past_key_values=cache, use_cache=True)))
    with torch.no_grad():
        first = m.generate(torch.randint(1, 512, (1, 6)), max_new_tokens=3, do_sample=False, pad_token_id=0,
                           return_dict_in_generate=True)
        print("  generate(sequences, past_key_values=<its cache>, num_beams=3): " + attempt(
            lambda: m.generate(first.sequences, past_key_values=first.cache, max_new_tokens=3, num_beams=3,
                               pad_token_id=0)))
