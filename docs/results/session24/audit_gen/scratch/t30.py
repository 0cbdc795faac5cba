import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
N=10
for over in [dict(static_attention_cache=True), dict(static_attention_cache=True, graphed_decoding=True), dict(graphed_decoding=True)]:
    m = build("llama", **over); asst = build("llama", seed=1, **over)
    torch.manual_seed(3)
    ids = torch.randint(1,512,(1,7)); ids[0, 3:5] = ids[0, 0:2]
    with torch.no_grad():
        ref = m.generate(ids, max_new_tokens=N, do_sample=False, pad_token_id=0)
        a = m.generate(ids, max_new_tokens=N, do_sample=False, pad_token_id=0, assistant_model=asst)
        p = m.generate(ids, max_new_tokens=N, do_sample=False, pad_token_id=0, prompt_lookup_num_tokens=3)
    print(over, "assisted", torch.equal(a, ref), "lookup", torch.equal(p, ref))
