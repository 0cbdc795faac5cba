import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
for fam in FAMS:
    m = build(fam)
    torch.manual_seed(1)
    ids = torch.randint(0, 512, (1, 11))
    N = 12
    ref, steps = manual_greedy(m, ids, N)
    with torch.no_grad():
        out = m.generate(ids, max_new_tokens=N, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    same = torch.equal(out.sequences, ref)
    errs = [rel(a, b) for a, b in zip(out.logits, steps)]
    print(fam, "tokens equal:", same, "max rel err", max(errs), "top1-top2 gap min", min(float(s.topk(2).values.diff().abs().min()) for s in steps))
