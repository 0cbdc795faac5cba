import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
m = build("llama")
ids = torch.tensor([[5, 6, 600, 7]])
for pcs in [None, 1]:
    try:
        with torch.no_grad(): m.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0, prefill_chunk_size=pcs)
        print(pcs, "no error")
    except Exception as e:
        print(pcs, type(e).__name__, str(e)[:150])
