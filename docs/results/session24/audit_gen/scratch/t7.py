import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
from wonderful_matrices.models.cache import CheemsCache
for fam in FAMS:
    m = build(fam)
    torch.manual_seed(3)
    res=[]
    for L, chunk in [(1,1),(16,16),(17,16),(33,16),(9,8),(40,7),(40,3),(40,1),(37,5)]:
        ids = torch.randint(0,512,(2,L+3))
        with torch.no_grad():
            ref = m(ids, use_cache=False).logits
            c = CheemsCache(m.config)
            a = m(ids[:, :L], past_key_values=c, use_cache=True, prefill_chunk_tokens=chunk).logits
            b = torch.cat([m(ids[:, t:t+1], past_key_values=c, use_cache=True).logits for t in range(L, L+3)],1)
        res.append("%d/%d:%.0e,%.0e"%(L,chunk,rel(a,ref[:, :L]),rel(b,ref[:, L:])))
    print(fam, res)
