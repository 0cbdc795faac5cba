import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
N=8
for fam in FAMS:
    m = build(fam)
    torch.manual_seed(2)
    lens = [3, 9, 1, 6]
    prompts = [torch.randint(1, 512, (L,)) for L in lens]
    W = max(lens)
    ids = torch.zeros(len(lens), W, dtype=torch.long); mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, W-len(p):] = p; mask[i, W-len(p):] = 1
    with torch.no_grad():
        out = m.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    res=[]
    for i, p in enumerate(prompts):
        with torch.no_grad():
            o1 = m.generate(p[None], max_new_tokens=N, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        same = torch.equal(out.sequences[i, W:], o1.sequences[0, len(p):])
        err = max(rel(out.logits[t][i].double(), o1.logits[t][0].double()) for t in range(N))
        res.append((same, "%.1e"%err))
    print(fam, res)
