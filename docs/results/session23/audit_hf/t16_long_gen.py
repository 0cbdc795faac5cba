# longer greedy generation (past keep_window=8 and past SSD chunk 16): cache vs no cache, padded batch vs single
import torch, sys
from common import *
for name in ["cheems-tiny", "doge-tiny", "jamba-tiny", "mamba2-tiny", "llama-tiny"]:
    m = wm_model(name)
    ids = torch.randint(1, 512, (2, 21), generator=torch.Generator().manual_seed(3))
    a = m.generate(ids, max_new_tokens=30, do_sample=False)
    b = m.generate(ids, max_new_tokens=30, do_sample=False, use_cache=False)
    # compare logits too: teacher-forced full forward vs per-step scores
    o = m.generate(ids, max_new_tokens=30, do_sample=False, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad(): full = m(o.sequences).logits[:, 20:-1]
    step = torch.stack(o.logits, 1)
    short = ids[1:, 5:]
    padded = torch.cat([ids[:1], torch.cat([torch.zeros(1, 5, dtype=torch.long), short], 1)])
    mask = torch.ones_like(padded); mask[1, :5] = 0
    pb = m.generate(padded, attention_mask=mask, max_new_tokens=30, do_sample=False, pad_token_id=0)
    ps = m.generate(short, max_new_tokens=30, do_sample=False)
    beams = m.generate(padded, attention_mask=mask, max_new_tokens=12, num_beams=3, pad_token_id=0)
    beams1 = m.generate(short, max_new_tokens=12, num_beams=3)
    print(name, "cache==nocache", torch.equal(a, b), "step logits vs full fwd maxdiff %.2e" % (step - full).abs().max().item(),
          "leftpad==single", torch.equal(pb[1, 21:], ps[0, 16:]), "beam leftpad==single", torch.equal(beams[1, 21:], beams1[0, 16:]))
