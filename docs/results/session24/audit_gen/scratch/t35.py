import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
from transformers import DynamicCache
m = build("cheems")
ids = torch.tensor([[5, 6, 7]])
for kw in [dict(past_key_values=DynamicCache()), dict(cache_implementation="static"), dict(cache_implementation="dynamic")]:
    try:
        with torch.no_grad(): o=m.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0, **kw)
        print(list(kw), "no error", o.tolist())
    except Exception as e:
        print(list(kw), type(e).__name__, str(e)[:150])
