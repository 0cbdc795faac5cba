import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
@torch.no_grad()
def brute_beam(m, ids, k, n):
    beams = [(ids[0].tolist(), 0.0)]
    for _ in range(n):
        cand = []
        seqs = torch.tensor([b[0] for b in beams])
        lp = full_logits(m, seqs)[:, -1].log_softmax(-1)
        for (s, sc), row in zip(beams, lp):
            v, i = row.topk(k)
            cand += [(s + [int(j)], sc + float(x)) for x, j in zip(v, i)]
        cand.sort(key=lambda c: -c[1])
        beams = cand[:k]
    return beams
N=5; K=3
for fam in FAMS:
    m = build(fam)
    torch.manual_seed(6)
    res=[]
    for L in [1, 6]:
        ids = torch.randint(0,512,(1,L))
        with torch.no_grad():
            o = m.generate(ids, num_beams=K, num_return_sequences=K, max_new_tokens=N, do_sample=False, early_stopping=False,
                           length_penalty=0.0, output_scores=True, return_dict_in_generate=True, pad_token_id=0)
        bb = brute_beam(m, ids, K, N)
        same = [s for s,_ in bb] == o.sequences.tolist()
        err = max(abs(a - float(b)) for (_, a), b in zip(bb, o.sequences_scores))
        res.append((L, same, "%.1e"%err))
    print(fam, res)
