import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
N=4
for fam in FAMS:
    m = build(fam)
    torch.manual_seed(3)
    ids = torch.randint(1,512,(1,6))
    res=[]
    for kw in [dict(num_beams=3, num_return_sequences=3, length_penalty=0.0), dict(do_sample=True, num_return_sequences=2, top_k=5)]:
        with torch.no_grad():
            torch.manual_seed(0); ref = m.generate(ids, max_new_tokens=2*N, pad_token_id=0, **kw)
            o1 = m.generate(ids, max_new_tokens=N, do_sample=False, pad_token_id=0, return_dict_in_generate=True)
            try:
                torch.manual_seed(0)
                # continue: prompt = first N greedy tokens (from cache)
                o2 = m.generate(o1.sequences, past_key_values=o1.cache, max_new_tokens=N, pad_token_id=0, **kw)
                # reference without cache: same extended prompt
                torch.manual_seed(0)
                r2 = m.generate(o1.sequences, max_new_tokens=N, pad_token_id=0, **kw)
                res.append((list(kw)[0], torch.equal(o2, r2)))
            except Exception as e:
                res.append((list(kw)[0], type(e).__name__, str(e)[:150]))
    print(fam, res)
