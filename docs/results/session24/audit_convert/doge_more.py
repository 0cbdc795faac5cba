from common import *
from transformers import DogeConfig, DogeForCausalLM
from wonderful_matrices.models.convert import from_hf_doge
exec(open("doge_checks.py").read().split("def logits_check")[0])
torch.manual_seed(1)
def uniq(b, L):  # distinct tokens per row: no exact bias ties (see doge_tie_repeated_tokens.py)
    return torch.stack([torch.randperm(60)[:L] + 1 for _ in range(b)])
for label, kw in {"default": {}, "MHA": dict(num_key_value_heads=4), "attention_bias": dict(attention_bias=True),
                  "odd hidden 30": dict(hidden_size=30, num_attention_heads=5, num_key_value_heads=5),
                  "head_dim 10": dict(head_dim=10)}.items():
    hf = build(**kw); ours = from_hf_doge(hf); x = uniq(2, 15)
    with torch.no_grad(): check(f"{label} logits (unique tokens)", rel(ours(x).logits, hf(x).logits))
hf = build(); ours = from_hf_doge(hf)
x = uniq(3, 9); mask = torch.ones(3, 9, dtype=torch.long); mask[0, :4] = 0; mask[1, :1] = 0
hf32 = build().float(); hf32.load_state_dict(hf.state_dict()); ours32 = from_hf_doge(hf32)
with torch.no_grad():
    a = ours32(x, attention_mask=mask).logits; b = hf32(x, attention_mask=mask).logits
    print("HF float32 has nan:", b.isnan().any().item())
    check("f32 left-pad row0 valid", rel(a[0, 4:], b[0, 4:]), 1e-5)
    check("f32 left-pad row1 valid", rel(a[1, 1:], b[1, 1:]), 1e-5)
    check("f32 left-pad row2", rel(a[2], b[2]), 1e-5)
    x1 = uniq(1, 12)
    o1 = ours(x1[:, :8], use_cache=True); o2 = ours(x1[:, 8:], cache=o1.past_key_values, use_cache=True)
    h1 = hf(x1[:, :8], use_cache=True); h2 = hf(x1[:, 8:], cache=h1.past_key_values, use_cache=True)
    check("cached continuation vs HF cached", rel(o2.logits, h2.logits))
    check("ours cached vs ours full", rel(o2.logits, ours(x1).logits[:, 8:]))
    g1 = ours.generate(x1[:, :6], max_new_tokens=10, do_sample=False, pad_token_id=0)
    g2 = hf.generate(x1[:, :6], max_new_tokens=10, do_sample=False, pad_token_id=0)
    print(("OK  " if torch.equal(g1, g2) else "FAIL"), "greedy generate equal (generated tokens may repeat -> ties)", g1.tolist(), g2.tolist())
for tie in (False, True):
    hf = build(tie_word_embeddings=tie); ours = from_hf_doge(hf); re, d = save_reload(ours); x = uniq(2, 10)
    with torch.no_grad():
        check(f"save/reload (tie={tie}) vs converted", rel(re(x).logits, ours(x).logits), 1e-12)
        check(f"reload vs HF (tie={tie})", rel(re(x).logits, hf(x).logits))
def conv_cmp(label, **kw):
    try: hf = build(**kw)
    except Exception as e: print(f"SKIP {label}: HF refuses: {type(e).__name__}: {e}"); return
    r = expect_error(label, lambda: from_hf_doge(hf))
    if r is not None:
        x = uniq(1, 12)
        with torch.no_grad(): print(f"     silent conversion: logits rel err vs HF = {rel(r(x).logits, hf(x).logits):.3e}")
conv_cmp("is_moe", is_moe=True, num_experts=16, num_experts_per_tok=2)
conv_cmp("sliding_window=4", sliding_window=4)
conv_cmp("mlp_bias", mlp_bias=True)
conv_cmp("hidden_act gelu", hidden_act="gelu")
conv_cmp("rope linear", rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0})
conv_cmp("keep_window_size=None", keep_window_size=None)
