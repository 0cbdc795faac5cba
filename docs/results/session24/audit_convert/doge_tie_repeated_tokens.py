"""Doge conversion: logits diverge from HF whenever DMA key biases tie exactly at the keep_window cut.
HF keeps the EARLIER tied key (torch.topk), the converted model keeps the LATER one (library's tie rule).
Exact ties occur (a) for repeated tokens at layer 0 (values depend only on the token, no RoPE on v) and
(b) for every key of a freshly initialised HF Doge (A initialised to 0 -> mask exp(0)=1 for all keys)."""
from common import *
from transformers import DogeConfig, DogeForCausalLM
from wonderful_matrices.models.convert import from_hf_doge
torch.manual_seed(0)
cfg = DogeConfig(vocab_size=61, hidden_size=24, intermediate_size=40, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=2, keep_window_size=3, rope_parameters={"rope_type": "default", "rope_theta": 500.0})
cfg._attn_implementation = "eager"
hf0 = randomize(DogeForCausalLM(cfg)).double().eval()   # A == 0 as HF initialises it
print("HF A after init:", hf0.model.layers[0].self_attn.A.tolist())
hf = DogeForCausalLM(cfg).double().eval(); hf.load_state_dict(hf0.state_dict())
with torch.no_grad():
    for n, p in hf.named_parameters():
        if n.endswith(".A"): p.copy_(0.5 + 0.5 * torch.rand_like(p))
        elif "dt_proj.weight" in n: p.copy_(torch.randn_like(p))
unique = (torch.randperm(60)[:8] + 1).unsqueeze(0)
rep = unique.clone(); rep[0, 5] = rep[0, 1]; rep[0, 6] = rep[0, 2]   # tokens at 1,2 repeat at 5,6
with torch.no_grad():
    for model_name, m in (("A randomised", hf), ("A=0 (HF init)", hf0)):
        ours = from_hf_doge(m)
        for name, x in (("unique tokens", unique), ("repeated tokens", rep)):
            a, b = ours(x).logits[0], m(x).logits[0]
            print(f"[{model_name}] {name} {x.tolist()} per-position rel:", [f"{rel(a[i], b[i]):.0e}" for i in range(8)])
            check(f"[{model_name}] {name}: logits", rel(a, b))
v = torch.tensor([[0.5, 0.9, 0.1, 0.9, 0.2]], dtype=torch.float64)
print("torch.topk(k=1) tie between index 1 and 3 ->", torch.topk(v, 1, sorted=False).indices.tolist(),
      "(HF keeps the earlier key; library rule: later key)")
