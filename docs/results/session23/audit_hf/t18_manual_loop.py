# manual incremental decoding as users write it (no generate): logits must match the full forward
import torch, sys
from common import *
name = sys.argv[1] if len(sys.argv) > 1 else "cheems-tiny"
m = llama_model() if name == "hf-llama" else wm_model(name)
ids = torch.randint(1, 512, (2, 12), generator=torch.Generator().manual_seed(3))
mask = torch.ones_like(ids); mask[1, :4] = 0
with torch.no_grad():
    # reference: full forward with left padding
    full = m(ids, attention_mask=mask).logits
    # prefill 8, then one token at a time with the growing mask (HF style), with and without cache_position/position_ids
    for variant in ["mask", "mask+cache_position", "mask+position_ids", "chunk of 2"]:
        o = m(ids[:, :8], attention_mask=mask[:, :8], use_cache=True)
        pkv, outs = o.past_key_values, [o.logits]
        t = 8
        while t < 12:
            n = 2 if variant == "chunk of 2" else 1
            kw = dict(attention_mask=mask[:, :t + n], past_key_values=pkv, use_cache=True)
            if variant == "mask+cache_position": kw["cache_position"] = torch.arange(t, t + n)
            if variant == "mask+position_ids":
                kw["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)[:, t:t + n]
            o = m(ids[:, t:t + n], **kw); pkv = o.past_key_values; outs.append(o.logits); t += n
        inc = torch.cat(outs, 1)
        real = mask.bool()
        print(name, variant, "maxdiff on real tokens %.2e" % (inc - full)[real].abs().max().item())
