import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
from wonderful_matrices.models.cache import CheemsCache
for fam in FAMS:
    m = build(fam)
    torch.manual_seed(1)
    ids = torch.randint(0, 512, (1, 11))
    with torch.no_grad():
        full = m(ids, use_cache=False).logits
        c = CheemsCache(m.config)
        a = m(ids[:, :6], past_key_values=c, use_cache=True).logits
        errs=[]
        for t in range(6, 11):
            b = m(ids[:, t:t+1], past_key_values=c, use_cache=True).logits
            errs.append(rel(b[:, -1], full[:, t]))
        f2 = m(ids, use_cache=False).logits
    print(fam, "prefill err", rel(a, full[:, :6]), "step errs", ["%.1e"%e for e in errs], "repeat", rel(f2, full), full.dtype)
