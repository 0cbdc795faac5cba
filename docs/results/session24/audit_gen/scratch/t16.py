import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
N=5
for over in [dict(), dict(static_attention_cache=True)]:
  for fam in FAMS:
    m = build(fam, **over)
    torch.manual_seed(2)
    lens = [3, 30, 1, 17]
    prompts = [torch.randint(1, 512, (L,)) for L in lens]
    W = max(lens)
    ids = torch.zeros(len(lens), W, dtype=torch.long); mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, W-len(p):] = p; mask[i, W-len(p):] = 1
    res=[]
    for chunk in [1, 4, 8, 16]:
        with torch.no_grad():
            out = m.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True, prefill_chunk_tokens=chunk)
        r=[]
        for i, p in enumerate(prompts):
            ref, steps = manual_greedy(m, p[None], N)
            r.append(torch.equal(out.sequences[i, W:], ref[0, len(p):]) and max(rel(out.logits[t][i].double(), steps[t][0]) for t in range(N)) < 1e-6)
        res.append((chunk, r))
    print(over, fam, res)
