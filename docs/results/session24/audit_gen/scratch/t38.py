import sys, warnings; sys.path.insert(0, "/tmp/audit_gen/scratch")
warnings.simplefilter("always")
from h import *
m = build("cheems")
with torch.no_grad():
    o = m.generate(torch.tensor([[1,2,3]]), max_new_tokens=3, do_sample=False)
    o = m.generate(torch.tensor([[1,2,3],[4,5,6]]), attention_mask=torch.ones(2,3,dtype=torch.long), max_new_tokens=3, do_sample=True, pad_token_id=0)
print(o.shape)
