from common import *
from transformers import LlamaConfig, LlamaForCausalLM
from wonderful_matrices.models.convert import from_hf_llama
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=61, hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 777.0})
cfg._attn_implementation = "eager"
hf64 = randomize(LlamaForCausalLM(cfg)).double().eval()
for dt in (torch.float64, torch.float32):
    hf = hf64.to(dt); ours = from_hf_llama(hf)
    x = torch.randint(6, 61, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long); mask[0, :4] = 0; mask[1, :1] = 0
    with torch.no_grad():
        a = ours(x, attention_mask=mask).logits; b = hf(x, attention_mask=mask).logits
        print(dt, "ours has nan:", a.isnan().any().item(), " HF has nan:", b.isnan().any().item())
        tol = 1e-6 if dt == torch.float64 else 1e-5
        if not b.isnan().any():
            check(f"{dt} left-pad row0 valid", rel(a[0, 4:], b[0, 4:]), tol)
            check(f"{dt} left-pad row1 valid", rel(a[1, 1:], b[1, 1:]), tol)
            o1 = ours(x[:, :6], attention_mask=mask[:, :6], use_cache=True)
            o2 = ours(x[:, 6:], attention_mask=mask, cache=o1.past_key_values, use_cache=True)
            h1 = hf(x[:, :6], attention_mask=mask[:, :6], use_cache=True)
            h2 = hf(x[:, 6:], attention_mask=mask, cache=h1.past_key_values, use_cache=True)
            check(f"{dt} cached continuation all rows", rel(o2.logits, h2.logits), tol)
            g1 = ours.generate(x, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
            g2 = hf.generate(x, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
            print(("OK  " if torch.equal(g1, g2) else "FAIL"), dt, "greedy generate equal (left-padded batch)")
        else:
            # ours alone: padded row valid part equals unpadded run of the same tokens
            c = ours(x[0:1, 4:]).logits
            check(f"{dt} ours: left-padded row == unpadded run", rel(a[0, 4:], c[0]), 1e-12)
