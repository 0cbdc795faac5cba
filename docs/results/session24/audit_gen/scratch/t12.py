import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
from wonderful_matrices.models.cache import CheemsCache
for fam in FAMS:
    m = build(fam)
    ids = torch.randint(1,512,(2,6))
    res=[]
    for nb in [3, 1]:
        c = CheemsCache(m.config)
        with torch.no_grad():
            m(ids, past_key_values=c, use_cache=True)
            try:
                out = m(torch.randint(1,512,(nb,1)), past_key_values=c, use_cache=True)
                res.append((nb, "NO ERROR", tuple(out.logits.shape), float(out.logits.abs().max())))
            except Exception as e:
                res.append((nb, type(e).__name__, str(e)[:150]))
    print(fam, res)
