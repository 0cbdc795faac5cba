import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
from wonderful_matrices.models.cache import CheemsCache
for fam in FAMS:
    m = build(fam)
    torch.manual_seed(0)
    ids = torch.randint(1,512,(2,6))
    res=[]
    for nb in [3, 1]:
        c = CheemsCache(m.config)
        with torch.no_grad():
            m(ids, past_key_values=c, use_cache=True)
            try:
                out = m(torch.randint(1,512,(nb,1)), position_ids=torch.full((nb,1),6), past_key_values=c, use_cache=True)
                res.append((nb, "NO ERROR", tuple(out.logits.shape), c.real_tokens.tolist()))
            except Exception as e:
                res.append((nb, type(e).__name__, str(e)[:120]))
        # via generate
        c = CheemsCache(m.config)
        with torch.no_grad():
            m(ids, past_key_values=c, use_cache=True)
            try:
                o = m.generate(torch.randint(1,512,(nb,8)), past_key_values=c, max_new_tokens=2, do_sample=False, pad_token_id=0)
                res.append(("gen", nb, "NO ERROR", tuple(o.shape)))
            except Exception as e:
                res.append(("gen", nb, type(e).__name__, str(e)[:120]))
    print(fam, res)
