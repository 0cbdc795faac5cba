import os, sys, warnings, contextlib; warnings.filterwarnings("ignore"); sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from h import *
import wonderful_matrices.models.modeling as mod
from wonderful_matrices.models.cache import CheemsCache
def _generated_step(input_ids, cache):
    calls = getattr(mod._generation, "calls", None)
    if calls is None: return False
    mod._generation.calls = calls + 1
    return (calls > 0 and input_ids is not None and input_ids.dim() == 2 and input_ids.shape[1] == 1
            and isinstance(cache, CheemsCache) and cache.real_tokens is not None
            and cache.get_seq_length() >= mod._generation.prompt_len)
mod._generated_step = _generated_step
orig = mod.CheemsForCausalLM.generate
def generate(self, inputs=None, *a, **kw):
    src = inputs if inputs is not None else kw.get("input_ids", kw.get("inputs_embeds"))
    mod._generation.prompt_len = src.shape[1]
    return orig(self, inputs, *a, **kw)
mod.CheemsForCausalLM.generate = generate
N=5
torch.manual_seed(2)
lens=[3,7]; prompts=[torch.randint(1,512,(L,)) for L in lens]; W=7
ids=torch.zeros(2,W,dtype=torch.long); mask=torch.zeros_like(ids)
for i,p in enumerate(prompts): ids[i,W-len(p):]=p; mask[i,W-len(p):]=1
for fam in FAMS:
    m=build(fam)
    with torch.no_grad():
        o=m.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False, pad_token_id=0, prefill_chunk_size=1)
    print(fam, [torch.equal(o[i,W:], manual_greedy(m,p[None],N)[0][0,len(p):]) for i,p in enumerate(prompts)])
