import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
N=5
for fam in FAMS:
    m = build(fam)
    torch.manual_seed(3)
    ids = torch.randint(1,512,(2,6)); mask = torch.ones_like(ids); mask[0,:2]=0
    with torch.no_grad():
        ref = m.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False, pad_token_id=0)
        emb = m.get_input_embeddings()(ids)
        e = m.generate(inputs_embeds=emb, attention_mask=mask, max_new_tokens=N, do_sample=False, pad_token_id=0)
        nc = m.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False, pad_token_id=0, use_cache=False)
    print(fam, "embeds", torch.equal(e, ref[:, 6:]), "no-cache", torch.equal(nc, ref))
