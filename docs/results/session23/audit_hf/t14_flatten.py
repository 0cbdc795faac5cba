import torch, sys
import torch.nn.functional as F
from common import *
from transformers import DataCollatorWithFlattening, DataCollatorForLanguageModeling
name = sys.argv[1] if len(sys.argv) > 1 else "cheems-tiny"
m = llama_model() if name == "hf-llama" else wm_model(name)
g = torch.Generator().manual_seed(0)
docs = [torch.randint(1, 512, (n,), generator=g).tolist() for n in (5, 7, 4)]
coll = DataCollatorWithFlattening()
b = coll([{"input_ids": d} for d in docs])
print({k: v.shape for k, v in b.items()})
with torch.no_grad():
    packed = m(**b)
    tot, cnt, lg = 0.0, 0, []
    for d in docs:
        x = torch.tensor([d]); o = m(x, labels=x)
        tot += o.loss.item() * (len(d) - 1); cnt += len(d) - 1; lg.append(o.logits[0])
print("packed loss %.6f  per-doc token mean %.6f" % (packed.loss.item(), tot / cnt))
print("packed logits == per-doc logits:", torch.allclose(packed.logits[0], torch.cat(lg), atol=1e-5))
# DataCollatorForLanguageModeling with a tokenizer (pad -> -100)
tok = tokenizer(); tok.padding_side = "right"
c2 = DataCollatorForLanguageModeling(tok, mlm=False)
bb = c2([tok("hello world"), tok("the quick brown fox jumps")])
with torch.no_grad():
    o = m(**bb)
    manual = F.cross_entropy(o.logits[:, :-1].reshape(-1, o.logits.shape[-1]), bb["labels"][:, 1:].reshape(-1))
print("DCLM loss %.6f manual %.6f" % (o.loss.item(), manual.item()))
