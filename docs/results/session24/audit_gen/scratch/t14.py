import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
m = build("cheems")
print(m.generation_config)
torch.manual_seed(8)
ids = torch.randint(1,512,(3,5))
with torch.no_grad():
    free = m.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
print(free[:, 5:].tolist())
eos = int(free[0, 7])
eos2 = int(free[1, 9])
with torch.no_grad():
    a = m.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=eos)
    b = m.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=[eos, eos2])
    c = m.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=eos, min_new_tokens=4)
    d = m.generate(ids, max_length=9, do_sample=False, pad_token_id=0)
    e = m.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=eos)
print("eos", eos, a[:, 5:].tolist()); print("eos list", eos2, b[:, 5:].tolist()); print("min_new", c[:, 5:].tolist()); print("max_length", d.shape); print("no pad", e[:,5:].tolist())
