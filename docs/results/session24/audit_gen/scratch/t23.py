import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
N=20
for fam in FAMS:
    m = build(fam)
    torch.manual_seed(11)
    lens = [1, 2, 25, 8, 17]
    prompts = [torch.randint(1, 512, (L,)) for L in lens]
    W = max(lens)
    ids = torch.zeros(len(lens), W, dtype=torch.long); mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, W-len(p):] = p; mask[i, W-len(p):] = 1
    with torch.no_grad():
        out = m.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False, pad_token_id=0, return_dict_in_generate=True)
    r=[]
    for i, p in enumerate(prompts):
        ref, steps = manual_greedy(m, p[None], N)
        r.append(torch.equal(out.sequences[i, W:], ref[0, len(p):]))
    kv = [out.cache.kv_length(j) for j in range(len(m.config.mixer_types))]
    print(fam, r, "kv_length", kv, m.config.mixer_types)
