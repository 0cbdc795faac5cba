import sys; sys.path.insert(0, "/tmp/audit_gen/scratch")
from h import *
import logging
for fam in ["cheems","llama"]:
    m = build(fam)
    ids = torch.tensor([[5,6,7,8],[9,10,0,0]]); mask = torch.tensor([[1,1,1,1],[1,1,0,0]])
    with torch.no_grad():
        out = m.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
        alone = m.generate(ids[1:, :2], max_new_tokens=4, do_sample=False, pad_token_id=0)
    print(fam, out.tolist(), alone.tolist())
