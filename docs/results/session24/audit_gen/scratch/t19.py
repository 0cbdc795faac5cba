import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
from wonderful_matrices.models.cache import CheemsCache
N=5
for dt in [torch.float32, torch.bfloat16, torch.float16]:
  for fam in FAMS:
    m = build(fam, dtype=dt)
    m64 = build(fam)
    torch.manual_seed(3)
    ids = torch.randint(1,512,(2,20)); mask = torch.ones_like(ids); mask[0,:5]=0
    try:
        with torch.no_grad():
            o = m.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
            # stepwise cached vs full forward on same dtype
            seq = o.sequences
            fl = m(seq, attention_mask=torch.cat([mask, torch.ones(2,N,dtype=torch.long)],1), use_cache=False).logits
            f64 = m64(seq, attention_mask=torch.cat([mask, torch.ones(2,N,dtype=torch.long)],1), use_cache=False).logits
        errs = [rel(o.logits[t].double(), fl[:, 20+t-1].double()) for t in range(N)]
        e64 = [rel(o.logits[t].double(), f64[:, 20+t-1]) for t in range(N)]
        print(dt, fam, "cached vs full(same dtype) %.1e" % max(errs), "vs float64 %.1e" % max(e64), "logits dtype", fl.dtype)
    except Exception as e:
        print(dt, fam, type(e).__name__, str(e)[:200])
