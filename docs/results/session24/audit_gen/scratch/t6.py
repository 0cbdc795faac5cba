import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
N=5
for fam in FAMS:
    m = build(fam)
    torch.manual_seed(2)
    lens = [3, 7]
    prompts = [torch.randint(1, 512, (L,)) for L in lens]
    W = max(lens)
    ids = torch.zeros(len(lens), W, dtype=torch.long); mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, W-len(p):] = p; mask[i, W-len(p):] = 1
    res = []
    for pcs in [None, 1, 2, 3]:
        with torch.no_grad():
            out = m.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0, prefill_chunk_size=pcs)
        row=[]
        for i, p in enumerate(prompts):
            ref, steps = manual_greedy(m, p[None], N)
            row.append((torch.equal(out.sequences[i, W:], ref[0, len(p):]), "%.0e" % max(rel(out.logits[t][i].double(), steps[t][0]) for t in range(N))))
        res.append((pcs, row))
    print(fam, res)
