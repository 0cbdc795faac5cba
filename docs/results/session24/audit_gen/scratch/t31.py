import sys, copy; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
from wonderful_matrices.models.cache import CheemsCache
N=6
for fam in FAMS:
    m = build(fam)
    torch.manual_seed(4)
    prefix = torch.randint(1,512,(1,12))
    c = CheemsCache(m.config)
    with torch.no_grad():
        m(prefix, past_key_values=c, use_cache=True)
        # also advance once via a decode-step to create DMA buffers
    res=[]
    for s in range(3):
        suffix = torch.randint(1,512,(1,[1,3,9][s]))
        full = torch.cat([prefix, suffix],1)
        with torch.no_grad():
            ref = m.generate(full, max_new_tokens=N, do_sample=False, pad_token_id=0)
            cc = copy.deepcopy(c)
            o = m.generate(full, past_key_values=cc, max_new_tokens=N, do_sample=False, pad_token_id=0)
        res.append(torch.equal(o, ref))
    # now: a cache that went through decode steps (DMA buffers), then fork twice
    c2 = CheemsCache(m.config)
    with torch.no_grad():
        g = m.generate(prefix, past_key_values=c2, max_new_tokens=12, do_sample=False, pad_token_id=0)
        forks=[]
        for s in range(2):
            suffix = torch.randint(1,512,(1,[1,4][s]))
            full = torch.cat([g, suffix],1)
            ref = m.generate(full, max_new_tokens=N, do_sample=False, pad_token_id=0)
            o = m.generate(full, past_key_values=copy.deepcopy(c2), max_new_tokens=N, do_sample=False, pad_token_id=0)
            forks.append(torch.equal(o, ref))
    print(fam, res, forks)
