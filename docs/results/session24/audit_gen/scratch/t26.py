import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
from wonderful_matrices.models.cache import CheemsCache
import random
for fam in FAMS:
    m = build(fam)
    worst = 0; worst_desc=None
    for trial in range(6):
        random.seed(trial); torch.manual_seed(trial)
        pads = [random.randint(0, 12), 0]
        calls = [random.choice([1,1,1,2,3,5,9,17]) for _ in range(8)]
        T = sum(calls)
        ids = torch.randint(1,512,(2,T))
        # row 0 has pads[0] left pad tokens at the beginning of the first call (if first call long enough)
        p0 = min(pads[0], calls[0]-1)
        mask = torch.ones(2, T, dtype=torch.long); mask[0,:p0]=0
        c = CheemsCache(m.config); outs=[]; pos=0
        with torch.no_grad():
            for L in calls:
                outs.append(m(ids[:, pos:pos+L], attention_mask=mask[:, :pos+L], past_key_values=c, use_cache=True).logits)
                pos += L
            lg = torch.cat(outs,1)
            r0 = m(ids[:1, p0:], use_cache=False).logits[0]
            r1 = m(ids[1:], use_cache=False).logits[0]
        e = max(rel(lg[0, p0:], r0), rel(lg[1], r1))
        if e > worst: worst, worst_desc = e, (p0, calls)
    print(fam, "worst rel err %.1e" % worst, worst_desc)
