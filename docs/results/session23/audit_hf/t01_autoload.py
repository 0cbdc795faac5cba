import sys, torch, tempfile
from common import *
from transformers import AutoConfig, AutoModelForCausalLM
for name in ["cheems-tiny","llama-tiny","mamba2-tiny","jamba-tiny","doge-tiny"]:
    m = wm_model(name)
    ids = torch.randint(0, 512, (2, 9))
    with torch.no_grad(): ref = m(ids).logits
    d = tempfile.mkdtemp()
    m.save_pretrained(d, safe_serialization=True)
    for kw in [{}, {"trust_remote_code": True}, {"torch_dtype": "auto"}, {"dtype": "auto"}]:
        try:
            m2 = AutoModelForCausalLM.from_pretrained(d, **kw).eval()
            with torch.no_grad(): out = m2(ids).logits
            print(name, kw, type(m2).__name__, m2.dtype, "exact" if torch.equal(out, ref) else f"DIFF {(out-ref).abs().max()}")
        except Exception as e:
            print(name, kw, "ERR", type(e).__name__, str(e)[:300])
    for kw in [{"torch_dtype": "bfloat16"}, {"dtype": torch.bfloat16}]:
        try:
            m2 = AutoModelForCausalLM.from_pretrained(d, **kw).eval()
            with torch.no_grad(): out = m2(ids).logits
            print(name, kw, m2.dtype, out.dtype, "maxdiff", (out.float()-ref).abs().max().item(), "ref scale", ref.abs().max().item())
        except Exception as e:
            print(name, kw, "ERR", type(e).__name__, str(e)[:300])
    c = AutoConfig.from_pretrained(d); print(" config", type(c).__name__)
