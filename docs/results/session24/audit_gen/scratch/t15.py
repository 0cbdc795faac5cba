import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
N=6
for over in [dict(static_attention_cache=True), dict(graphed_decoding=True), dict(static_attention_cache=True, graphed_decoding=True)]:
  for fam in FAMS:
    m = build(fam, **over)
    torch.manual_seed(2)
    lens = [3, 9, 1, 6]
    prompts = [torch.randint(1, 512, (L,)) for L in lens]
    W = max(lens)
    ids = torch.zeros(len(lens), W, dtype=torch.long); mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, W-len(p):] = p; mask[i, W-len(p):] = 1
    with torch.no_grad():
        out = m.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
        bo = m.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False, pad_token_id=0, num_beams=3, length_penalty=0.0)
    res=[]
    for i, p in enumerate(prompts):
        ref, steps = manual_greedy(m, p[None], N)
        with torch.no_grad():
            b1 = m.generate(p[None], max_new_tokens=N, do_sample=False, pad_token_id=0, num_beams=3, length_penalty=0.0)
        res.append((torch.equal(out.sequences[i, W:], ref[0, len(p):]), "%.0e"%max(rel(out.logits[t][i].double(), steps[t][0]) for t in range(N)), torch.equal(bo[i, W:], b1[0, len(p):])))
    print(over, fam, res)
