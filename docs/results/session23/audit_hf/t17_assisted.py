import torch
from common import *
from transformers import DynamicCache
ids = torch.randint(1, 512, (1, 9), generator=torch.Generator().manual_seed(3))
def run(label, f):
    try: print(label, f())
    except Exception as e: print(label, "ERR", type(e).__name__, str(e)[:250])
for name in ["hf-llama", "llama-tiny", "cheems-tiny"]:
    m = llama_model() if name == "hf-llama" else wm_model(name)
    a = llama_model(seed=1) if name == "hf-llama" else wm_model(name, seed=1)
    ref = m.generate(ids, max_new_tokens=10, do_sample=False)
    print("==", name)
    run(" assisted == greedy", lambda: torch.equal(m.generate(ids, assistant_model=a, max_new_tokens=10, do_sample=False), ref))
    run(" prompt lookup == greedy", lambda: torch.equal(m.generate(torch.cat([ids, ids], 1), prompt_lookup_num_tokens=3, max_new_tokens=10, do_sample=False), m.generate(torch.cat([ids, ids], 1), max_new_tokens=10, do_sample=False)))
    run(" static cache", lambda: torch.equal(m.generate(ids, cache_implementation="static", max_new_tokens=10, do_sample=False), ref))
    run(" DynamicCache()", lambda: torch.equal(m.generate(ids, past_key_values=DynamicCache(), max_new_tokens=10, do_sample=False), ref))
    run(" dola", lambda: m.generate(ids, dola_layers="high", max_new_tokens=3, do_sample=False).shape)
