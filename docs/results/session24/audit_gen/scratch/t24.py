import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
N=5; g=1.7
for fam in FAMS:
    m = build(fam)
    torch.manual_seed(12)
    ids = torch.randint(1,512,(1,6)); neg = torch.randint(1,512,(1,3))
    with torch.no_grad():
        o = m.generate(ids, max_new_tokens=N, do_sample=False, pad_token_id=0, guidance_scale=g, negative_prompt_ids=neg)
    seq = ids.clone(); ok=True
    with torch.no_grad():
        for t in range(N):
            c = full_logits(m, seq)[:, -1].log_softmax(-1)
            u = full_logits(m, torch.cat([neg, seq[:, 6:]],1))[:, -1].log_softmax(-1)
            s = g*(c-u)+u
            seq = torch.cat([seq, s.argmax(-1, keepdim=True)],1)
    print(fam, torch.equal(o, seq), o[0,6:].tolist(), seq[0,6:].tolist())
