from common import *
from transformers import LlamaConfig, LlamaForCausalLM
from wonderful_matrices.models.convert import from_hf_llama
torch.manual_seed(0)

def build(**kw):
    base = dict(vocab_size=61, hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 777.0})
    base.update(kw)
    cfg = LlamaConfig(**base)
    cfg._attn_implementation = "eager"
    return randomize(LlamaForCausalLM(cfg)).double().eval()

def logits_check(label, hf, L=11):
    ours = from_hf_llama(hf)
    x = torch.randint(0, hf.config.vocab_size, (2, L))
    with torch.no_grad():
        check(f"{label} logits", rel(ours(x).logits, hf(x).logits))
    return ours

cases = {
    "default(GQA 4/2)": {},
    "tied": dict(tie_word_embeddings=True),
    "MHA": dict(num_key_value_heads=4),
    "MQA": dict(num_key_value_heads=1),
    "attention_bias": dict(attention_bias=True),
    "rms_norm_eps=0.5": dict(rms_norm_eps=0.5),
    "odd hidden 30, 5 heads, head_dim 6": dict(hidden_size=30, num_attention_heads=5, num_key_value_heads=5),
    "explicit head_dim 10 != hidden/heads": dict(head_dim=10),
    "rope_theta 10": dict(rope_parameters={"rope_type": "default", "rope_theta": 10.0}),
    "bos/eos/pad ids": dict(pad_token_id=3, bos_token_id=4, eos_token_id=5),
}
for label, kw in cases.items():
    try:
        logits_check(label, build(**kw))
    except Exception as e:
        print(f"FAIL {label}: {type(e).__name__}: {e}")

# left padding, cache, generate
hf = build()
ours = from_hf_llama(hf)
x = torch.randint(6, 61, (3, 9))
mask = torch.ones(3, 9, dtype=torch.long); mask[0, :4] = 0; mask[1, :1] = 0
with torch.no_grad():
    a = ours(x, attention_mask=mask).logits; b = hf(x, attention_mask=mask).logits
    check("left-pad row0 (valid part)", rel(a[0, 4:], b[0, 4:]))
    check("left-pad row1 (valid part)", rel(a[1, 1:], b[1, 1:]))
    check("left-pad row2 (no pad)", rel(a[2], b[2]))
    # incremental with cache: prefix then one step
    o1 = ours(x[:, :6], attention_mask=mask[:, :6], use_cache=True)
    o2 = ours(x[:, 6:], attention_mask=mask, past_key_values=o1.past_key_values, use_cache=True)
    h1 = hf(x[:, :6], attention_mask=mask[:, :6], use_cache=True)
    h2 = hf(x[:, 6:], attention_mask=mask, past_key_values=h1.past_key_values, use_cache=True)
    check("cached continuation (row2)", rel(o2.logits[2], h2.logits[2]))
    check("cached continuation (row0 valid)", rel(o2.logits[0], h2.logits[0]))
    g1 = ours.generate(x, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    g2 = hf.generate(x, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    print(("OK  " if torch.equal(g1, g2) else "FAIL"), "greedy generate equal (left-padded batch)")
    if not torch.equal(g1, g2): print(g1, g2, sep="\n")
    g1 = ours.generate(x[2:], max_new_tokens=10, do_sample=False, pad_token_id=0)
    g2 = hf.generate(x[2:], max_new_tokens=10, do_sample=False, pad_token_id=0)
    print(("OK  " if torch.equal(g1, g2) else "FAIL"), "greedy generate equal (single, no mask)")

# save/reload
for tie in (False, True):
    hf = build(tie_word_embeddings=tie)
    ours = from_hf_llama(hf)
    re, d = save_reload(ours)
    x = torch.randint(0, 61, (2, 7))
    with torch.no_grad():
        check(f"save_pretrained/AutoModel reload (tie={tie}) vs converted", rel(re(x).logits, ours(x).logits), 1e-12)
        check(f"reload vs HF (tie={tie})", rel(re(x).logits, hf(x).logits))
    print("   reloaded dtype", next(re.parameters()).dtype, "config.tie", re.config.tie_word_embeddings)
