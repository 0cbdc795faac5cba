import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
from wonderful_matrices.models.cache import CheemsCache
for kw in [dict(keep_window=None), dict(keep_window=64), dict(keep_window=8), dict(keep_window=8, dma_decode_backend="torch")]:
    m = build("doge", **kw)
    torch.manual_seed(3)
    res=[]
    for L, chunk in [(16,16),(40,7)]:
        ids = torch.randint(0,512,(2,L+3))
        with torch.no_grad():
            ref = m(ids, use_cache=False).logits
            c = CheemsCache(m.config)
            a = m(ids[:, :L], past_key_values=c, use_cache=True, prefill_chunk_tokens=chunk).logits
            b = torch.cat([m(ids[:, t:t+1], past_key_values=c, use_cache=True).logits for t in range(L, L+3)],1)
        res.append("%d/%d:%.0e,%.0e"%(L,chunk,rel(a,ref[:, :L]),rel(b,ref[:, L:])))
    print(kw, res)
