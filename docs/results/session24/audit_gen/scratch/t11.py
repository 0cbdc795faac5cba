import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
N=4
for fam in FAMS:
    m = build(fam)
    torch.manual_seed(7)
    res=[]
    for padded in [False, True]:
        ids = torch.randint(1,512,(2,6))
        mask = torch.ones_like(ids)
        if padded:
            ids[0,:3]=0; mask[0,:3]=0
        with torch.no_grad():
            full = m.generate(ids, attention_mask=mask, max_new_tokens=2*N, do_sample=False, pad_token_id=0)
            o1 = m.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False, pad_token_id=0, return_dict_in_generate=True)
            cache = o1.get("cache", o1.get("past_key_values"))
            seen = cache.get_seq_length()
            mask2 = torch.cat([mask, torch.ones(2, N, dtype=torch.long)], 1)
            try:
                o2 = m.generate(o1.sequences, attention_mask=mask2, past_key_values=cache, max_new_tokens=N, do_sample=False, pad_token_id=0)
                res.append((padded, seen, torch.equal(o2, full)))
            except Exception as e:
                res.append((padded, seen, repr(e)[:200]))
    print(fam, list(o1.keys()), res)
