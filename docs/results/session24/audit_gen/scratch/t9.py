import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
import torch.nn.functional as F
def warp(logits, temperature, top_k, top_p):
    s = logits / temperature
    if top_k:
        kth = s.topk(top_k, -1).values[..., -1:]
        s = s.masked_fill(s < kth, float("-inf"))
    if top_p < 1:
        srt, idx = s.sort(-1, descending=False)
        cum = srt.softmax(-1).cumsum(-1)
        remove = cum <= (1 - top_p)
        remove[..., -1] = False
        s = s.masked_fill(remove.scatter(-1, idx, remove), float("-inf"))
    return s
N=6
for fam in FAMS:
    m = build(fam)
    torch.manual_seed(5)
    ids = torch.randint(0,512,(2,7))
    kw = dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=N, num_return_sequences=3,
              output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    with torch.no_grad():
        torch.manual_seed(123); o1 = m.generate(ids, **kw)
        torch.manual_seed(123); o2 = m.generate(ids, **kw)
    repro = torch.equal(o1.sequences, o2.sequences)
    seqs = o1.sequences
    errs=[]; inside=True
    for t in range(N):
        with torch.no_grad():
            lg = full_logits(m, seqs[:, :7+t])[:, -1]
        ref = warp(lg.float(), 0.7, 20, 0.9)
        sc = o1.scores[t]
        fin = torch.isfinite(ref)
        same_support = torch.equal(fin, torch.isfinite(sc))
        errs.append(float(((sc[fin]-ref[fin]).abs().max())) if same_support else float("inf"))
        chosen = seqs[:, 7+t]
        inside &= bool(fin.gather(1, chosen[:,None]).all())
    prompts_ok = torch.equal(seqs[:, :7], ids.repeat_interleave(3,0))
    print(fam, "repro", repro, "prompt rows ok", prompts_ok, "max abs score err", max(errs), "chosen in support", inside, "distinct", len({tuple(s) for s in seqs.tolist()}))
