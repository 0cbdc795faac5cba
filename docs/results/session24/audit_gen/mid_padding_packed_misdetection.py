"""Defect: padding that is not at the left of the row (a hole in attention_mask, or right padding) is taken for a
packed-document boundary inside `generate`.

HF `generate` passes position_ids = (cumsum(mask) - 1).masked_fill(mask == 0, 0), so a padded token after a real
one has position 0. `document_starts` (models/modeling.py:198) treats "position 0 after a real token" as a new
document even when that token is itself padding, so:
  * with the cache (the default) generate raises "past_key_values is not allowed with packed rows", a message
    about packing the user never did;
  * with use_cache=False every token after the hole silently loses the context before it.
The layers themselves handle such masks exactly: a direct forward with the same mask and no position_ids gives the
compacted prompt's logits to 1e-15, and HF's own Llama gives the compacted prompt's tokens.

Run from the repository root: .venv/bin/python docs/results/session24/audit_gen/mid_padding_packed_misdetection.py
"""
import warnings

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import wonderful_matrices as wm
from wonderful_matrices.models import presets
from wonderful_matrices.models.cache import CheemsCache

warnings.filterwarnings("ignore")
N = 6


def build(family):
    torch.manual_seed(0)
    cfg = presets.get(f"{family}-tiny", initializer_range=0.3)
    return wm.CheemsForCausalLM(cfg).to(torch.float64).eval()


def rel(a, b):
    return float((a - b).norm() / b.norm())


def try_generate(m, ids, **kw):
    try:
        with torch.no_grad():
            return m.generate(ids, max_new_tokens=N, do_sample=False, pad_token_id=0, **kw)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {str(e)[:110]}"


torch.manual_seed(4)
ids = torch.randint(1, 512, (1, 10))
hole = torch.ones_like(ids)
hole[0, 4:6] = 0                      # tokens 4 and 5 are padding in the middle of the prompt
compact = ids[:, hole[0].bool()]      # what the mask says the prompt is

print("== reference semantics: HF's own LlamaForCausalLM (random init) on the same mask")
torch.manual_seed(0)
hf = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=128)).double().eval()
with torch.no_grad():
    a = hf.generate(ids, attention_mask=hole, max_new_tokens=N, do_sample=False, pad_token_id=0)[:, 10:]
    b = hf.generate(compact, max_new_tokens=N, do_sample=False, pad_token_id=0)[:, compact.shape[1]:]
print("HF llama: hole-mask tokens == compacted-prompt tokens:", torch.equal(a, b))

for family in ["cheems", "llama", "doge", "mamba2", "jamba"]:
    m = build(family)
    with torch.no_grad():
        ref = m.generate(compact, max_new_tokens=N, do_sample=False, pad_token_id=0)[:, compact.shape[1]:]
        c = CheemsCache(m.config)
        direct = m(ids, attention_mask=hole, past_key_values=c, use_cache=True).logits[:, -1]
        direct_err = rel(direct, m(compact, use_cache=False).logits[:, -1])
    cached = try_generate(m, ids, attention_mask=hole)
    uncached = try_generate(m, ids, attention_mask=hole, use_cache=False)
    print(f"\n== {family}")
    print(f"  direct forward (no position_ids) with the hole vs compacted prompt, last logits rel err: {direct_err:.1e}"
          + ("   (mamba2 conv: documented exact for left padding only)" if family in ("mamba2", "jamba") else ""))
    print(f"  generate(use_cache=True)  -> {cached if isinstance(cached, str) else cached[:, 10:].tolist()}")
    print(f"  generate(use_cache=False) -> {uncached if isinstance(uncached, str) else uncached[:, 10:].tolist()}"
          f"   expected {ref.tolist()}"
          + ("" if isinstance(uncached, str) else f"  equal={torch.equal(uncached[:, 10:], ref)}"))

print("\n== realistic trigger: continuing a batched chat whose row 0 stopped early (padding now mid-row)")
m = build("cheems")
torch.manual_seed(8)
prompts = torch.randint(1, 512, (2, 5))
with torch.no_grad():
    free = m.generate(prompts, max_new_tokens=6, do_sample=False, pad_token_id=0)
eos = int(free[0, 7])                         # row 0 emits this at its 3rd step, row 1 never does
assert eos not in free[1, 5:].tolist()
with torch.no_grad():
    turn1 = m.generate(prompts, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=eos)
gen = turn1[:, 5:]
done_before = torch.cumsum((gen == eos).long(), 1) - (gen == eos).long()   # positions after the first eos
mask = torch.cat([torch.ones(2, 5, dtype=torch.long), (done_before == 0).long()], 1)
user_turn = torch.randint(1, 512, (2, 3))
ids2 = torch.cat([turn1, user_turn], 1)
mask2 = torch.cat([mask, torch.ones(2, 3, dtype=torch.long)], 1)
print("row 0 mask:", mask2[0].tolist())
print("generate(turn 2) ->", try_generate(m, ids2, attention_mask=mask2, eos_token_id=eos))

print("\n== right padding (misuse; HF warns) gets the same 'packed rows' error instead of a padding message")
rp = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
print(try_generate(build("llama"), rp, attention_mask=(rp != 0).long()))
