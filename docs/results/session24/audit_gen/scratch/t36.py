import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
from wonderful_matrices.models.cache import CheemsCache
for fam in ["llama", "jamba"]:
    res=[]
    outs=[]
    for st in [False, True]:
        m = build(fam, static_attention_cache=st, dtype=torch.float32)
        torch.manual_seed(4)
        ids = torch.randint(1,512,(2,250)); mask=torch.ones_like(ids); mask[0,:5]=0
        with torch.no_grad():
            o1 = m.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True)
            mask2 = torch.cat([mask, torch.ones(2,4,dtype=torch.long)],1)
            o2 = m.generate(o1.sequences, attention_mask=mask2, past_key_values=o1.cache, max_new_tokens=20, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
        outs.append(o2)
        if st: print(fam, "capacity", o1.cache.attention_capacity, o2.cache.attention_capacity)
    print(fam, torch.equal(outs[0].sequences, outs[1].sequences), max(rel(a,b) for a,b in zip(outs[0].logits, outs[1].logits)))
