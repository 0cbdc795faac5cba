import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
N=8
m = build("llama")
asst = build("llama", seed=1)
torch.manual_seed(3)
ids = torch.randint(1,512,(1,7))
ids[0, 3:5] = ids[0, 0:2]  # repeat for prompt lookup
with torch.no_grad():
    ref = m.generate(ids, max_new_tokens=N, do_sample=False, pad_token_id=0)
    a = m.generate(ids, max_new_tokens=N, do_sample=False, pad_token_id=0, assistant_model=asst)
    p = m.generate(ids, max_new_tokens=N, do_sample=False, pad_token_id=0, prompt_lookup_num_tokens=3)
    a_self = m.generate(ids, max_new_tokens=N, do_sample=False, pad_token_id=0, assistant_model=build("llama"))
print("assisted", torch.equal(a, ref), "lookup", torch.equal(p, ref), "self-assist", torch.equal(a_self, ref))
for fam in ["cheems","mamba2","doge","jamba"]:
    mm = build(fam)
    for kw in [dict(assistant_model=build(fam, seed=1)), dict(prompt_lookup_num_tokens=3)]:
        try:
            with torch.no_grad(): mm.generate(ids, max_new_tokens=N, do_sample=False, pad_token_id=0, **kw)
            print(fam, list(kw), "NO ERROR")
        except Exception as e:
            print(fam, list(kw), type(e).__name__, str(e)[:200])
