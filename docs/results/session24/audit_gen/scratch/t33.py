import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
N=6
for fam in FAMS:
    res=[]
    for gd in [False, True]:
        m = build(fam, graphed_decoding=gd)
        torch.manual_seed(4)
        ids = torch.randint(1,512,(1,8))
        pos = torch.arange(8)[None] + 100
        with torch.no_grad():
            o = m.generate(ids, position_ids=pos, max_new_tokens=N, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
        # reference: manual full forward with positions 100.. on the growing sequence
        seq = ids.clone(); steps=[]
        with torch.no_grad():
            for t in range(N):
                lg = m(seq, position_ids=torch.arange(seq.shape[1])[None]+100, use_cache=False).logits[:, -1]
                steps.append(lg); seq = torch.cat([seq, lg.argmax(-1, keepdim=True)],1)
        res.append((gd, torch.equal(o.sequences, seq), "%.1e" % max(rel(a.double(), b) for a,b in zip(o.logits, steps))))
    print(fam, res)
