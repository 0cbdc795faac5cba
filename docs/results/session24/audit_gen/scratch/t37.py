import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
from wonderful_matrices.models.cache import CheemsCache
for std in [0.1, 0.3, 0.6, 1.0]:
  for kw in [dict(keep_window=None), dict()]:
    m = build("doge", std=std, **kw)
    worst=0
    for seed in range(3):
        torch.manual_seed(seed)
        L=48; ids = torch.randint(0,512,(2,L+8))
        with torch.no_grad():
            ref = m(ids, use_cache=False).logits
            c = CheemsCache(m.config)
            a = m(ids[:, :L], past_key_values=c, use_cache=True, prefill_chunk_tokens=5).logits
            b = torch.cat([m(ids[:, t:t+1], past_key_values=c, use_cache=True).logits for t in range(L, L+8)],1)
        worst = max(worst, rel(a, ref[:, :L]), rel(b, ref[:, L:]), max(rel(b[:, i], ref[:, L+i]) for i in range(8)))
    print(std, kw, "%.1e" % worst)
