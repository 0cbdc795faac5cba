import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
N=4
for fam in FAMS:
    m = build(fam)
    torch.manual_seed(12)
    ids = torch.randint(1,512,(2,6)); mask=torch.ones_like(ids); mask[0,:2]=0
    try:
        with torch.no_grad():
            ref = m.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False, pad_token_id=0)
            o = m.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False, pad_token_id=0, output_attentions=True, output_hidden_states=True, return_dict_in_generate=True)
        print(fam, torch.equal(o.sequences, ref), len(o.hidden_states), [tuple(a.shape) if a is not None else None for a in o.attentions[-1]])
    except Exception as e:
        print(fam, type(e).__name__, str(e)[:200])
