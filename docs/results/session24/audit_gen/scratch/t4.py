import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
from wonderful_matrices.models.cache import CheemsCache
for fam in FAMS:
    m = build(fam)
    torch.manual_seed(2)
    lens = [5, 40, 1, 17, 33]
    prompts = [torch.randint(1, 512, (L+6,)) for L in lens]
    W = max(lens)
    ids = torch.zeros(len(lens), W, dtype=torch.long); mask = torch.zeros_like(ids)
    for i, (L, p) in enumerate(zip(lens, prompts)):
        ids[i, W-L:] = p[:L]; mask[i, W-L:] = 1
    res=[]
    with torch.no_grad():
        c = CheemsCache(m.config)
        lb = m(ids, attention_mask=mask, past_key_values=c, use_cache=True).logits
        steps=[]
        for t in range(6):
            mask = torch.cat([mask, torch.ones(len(lens),1,dtype=torch.long)],1)
            nxt = torch.stack([p[L+t] for L,p in zip(lens,prompts)])[:,None]
            steps.append(m(nxt, attention_mask=mask, past_key_values=c, use_cache=True).logits[:,-1])
        for i,(L,p) in enumerate(zip(lens,prompts)):
            f = m(p[None], use_cache=False).logits[0]
            e0 = rel(lb[i, W-L:], f[:L])
            es = max(rel(steps[t][i], f[L+t]) for t in range(6))
            res.append("%.0e/%.0e"%(e0,es))
    print(fam, res)
