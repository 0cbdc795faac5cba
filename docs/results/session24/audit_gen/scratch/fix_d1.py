import os, sys, warnings; warnings.filterwarnings("ignore"); sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from h import *
import torch.nn.functional as F
import wonderful_matrices.models.modeling as mod
def document_starts(position_ids, attention_mask, seq_idx, past):
    if seq_idx is not None:
        return F.pad(seq_idx[..., 1:] != seq_idx[..., :-1], (1, 0))
    if position_ids is None or past > 0 or position_ids.shape[-1] < 2:
        return None
    starts = position_ids[..., 1:] == 0
    if attention_mask is not None:
        real = attention_mask[..., -position_ids.shape[-1]:].to(device=starts.device, dtype=torch.bool)
        starts = starts & real[..., :-1] & real[..., 1:]
    return F.pad(starts, (1, 0))
mod.document_starts = document_starts
N=6
torch.manual_seed(4)
ids = torch.randint(1,512,(1,10)); hole = torch.ones_like(ids); hole[0,4:6]=0; comp = ids[:, hole[0].bool()]
for fam in ["cheems","llama","doge"]:
    m = build(fam)
    with torch.no_grad():
        ref = m.generate(comp, max_new_tokens=N, do_sample=False, pad_token_id=0)[:, comp.shape[1]:]
        a = m.generate(ids, attention_mask=hole, max_new_tokens=N, do_sample=False, pad_token_id=0)[:, 10:]
        b = m.generate(ids, attention_mask=hole, max_new_tokens=N, do_sample=False, pad_token_id=0, use_cache=False)[:, 10:]
        # packing still detected: two docs in one row
        d1, d2 = torch.randint(1,512,(1,5)), torch.randint(1,512,(1,7))
        row = torch.cat([d1,d2],1); pos = torch.cat([torch.arange(5), torch.arange(7)])[None]
        lp = m(row, position_ids=pos, use_cache=False).logits
        e = max(rel(lp[:, :5], m(d1, use_cache=False).logits), rel(lp[:, 5:], m(d2, use_cache=False).logits))
    print(fam, torch.equal(a, ref), torch.equal(b, ref), "packed still exact %.1e" % e)
