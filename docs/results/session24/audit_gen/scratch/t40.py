import sys, warnings; warnings.filterwarnings("ignore"); sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
m = build("llama")
torch.manual_seed(8)
ids = torch.randint(1,512,(3,5))
with torch.no_grad():
    free = m.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
eos = int(free[0, 7])
for pad in [600, -1, 511]:
    try:
        with torch.no_grad():
            o = m.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=pad, eos_token_id=eos)
        print(pad, "ok", o[:, 5:].tolist())
    except Exception as e:
        print(pad, type(e).__name__, str(e)[:150])
# same ids through a plain forward: 
try:
    m(torch.tensor([[600]]))
except Exception as e: print("forward:", type(e).__name__, str(e)[:100])
