import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
from wonderful_matrices.models.cache import CheemsCache
for fam in FAMS:
    for training in [False, True]:
        m = build(fam)
        if training: m.train()
        torch.manual_seed(1)
        ids = torch.randint(1,512,(2,30)); mask = torch.ones_like(ids); mask[0,:4]=0
        c = CheemsCache(m.config)
        outs = [m(ids[:, :5], attention_mask=mask[:, :5], past_key_values=c, use_cache=True).logits]
        for t in range(5, 30):
            outs.append(m(ids[:, t:t+1], attention_mask=mask[:, :t+1], past_key_values=c, use_cache=True).logits)
        lg = torch.cat(outs,1).detach()
        with torch.no_grad():
            m.eval()
            r0 = m(ids[:1, 4:], use_cache=False).logits[0]; r1 = m(ids[1:], use_cache=False).logits[0]
        print(fam, "train" if training else "eval+grad", "%.1e %.1e" % (rel(lg[0,4:], r0), rel(lg[1], r1)))
