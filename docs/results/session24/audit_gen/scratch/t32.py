import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
from wonderful_matrices.models.cache import CheemsCache
N=6
for fam in FAMS:
    m = build(fam)
    torch.manual_seed(4)
    ids = torch.randint(1,512,(1,10)); mask = torch.ones_like(ids); mask[0,4:6]=0
    comp = ids[:, mask[0].bool()]
    res=[]
    with torch.no_grad():
        ref = m.generate(comp, max_new_tokens=N, do_sample=False, pad_token_id=0)[:, comp.shape[1]:]
        for uc in [True, False]:
            try:
                o = m.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False, pad_token_id=0, use_cache=uc)[:, 10:]
                res.append((uc, torch.equal(o, ref)))
            except Exception as e:
                res.append((uc, type(e).__name__, str(e)[:60]))
        # direct forward with cache, no position_ids
        c = CheemsCache(m.config)
        lg = m(ids, attention_mask=mask, past_key_values=c, use_cache=True).logits[:, -1]
        rl = m(comp, use_cache=False).logits[:, -1]
        res.append(("fwd", "%.1e" % rel(lg, rl)))
    print(fam, res)
