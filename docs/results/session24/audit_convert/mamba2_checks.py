from common import *
from transformers import Mamba2Config, Mamba2ForCausalLM
from wonderful_matrices.models.convert import from_hf_mamba2
torch.manual_seed(0)
def build(**kw):
    base = dict(vocab_size=61, hidden_size=16, num_hidden_layers=2, state_size=8, expand=2, head_dim=8,
                num_heads=4, n_groups=2, conv_kernel=4, chunk_size=8, residual_in_fp32=False, pad_token_id=0)
    base.update(kw)
    return randomize(Mamba2ForCausalLM(Mamba2Config(**base))).double().eval()
def logits_check(label, hf, L=19):
    ours = from_hf_mamba2(hf)
    x = torch.randint(1, hf.config.vocab_size, (2, L))
    with torch.no_grad():
        check(f"{label} logits", rel(ours(x).logits, hf(x).logits))
    return ours
cases = {
    "default": {}, "tied": dict(tie_word_embeddings=True), "residual_in_fp32=True": dict(residual_in_fp32=True),
    "use_bias": dict(use_bias=True), "no conv bias": dict(use_conv_bias=False), "n_groups=1": dict(n_groups=1),
    "n_groups=4": dict(n_groups=4), "eps=0.5": dict(layer_norm_epsilon=0.5),
    "odd hidden 12, 3 heads of 8": dict(hidden_size=12, num_heads=3, n_groups=1), "conv_kernel 2": dict(conv_kernel=2),
    "chunk 4 (L not multiple)": dict(chunk_size=4), "head_dim 4, 8 heads": dict(head_dim=4, num_heads=8),
}
for label, kw in cases.items():
    try:
        logits_check(label, build(**kw))
    except Exception as e:
        print(f"FAIL {label}: {type(e).__name__}: {e}")
hf = build(); ours = from_hf_mamba2(hf)
x = torch.randint(1, 61, (2, 10))
with torch.no_grad():
    m = torch.ones_like(x)
    check("all-ones attention_mask", rel(ours(x, attention_mask=m).logits, hf(x, attention_mask=m).logits))
    g1 = ours.generate(x, max_new_tokens=10, do_sample=False, pad_token_id=0)
    g2 = hf.generate(x, max_new_tokens=10, do_sample=False, pad_token_id=0)
    print(("OK  " if torch.equal(g1, g2) else "FAIL"), "greedy generate equal")
    o1 = ours(x[:, :7], use_cache=True)
    o2 = ours(x[:, 7:8], cache=o1.past_key_values, use_cache=True)
    check("ours cached step vs full forward (position 7)", rel(o2.logits[:, -1], ours(x[:, :8]).logits[:, -1]))
for tie in (False, True):
    hf = build(tie_word_embeddings=tie); ours = from_hf_mamba2(hf)
    re, d = save_reload(ours)
    with torch.no_grad():
        check(f"save/reload (tie={tie}) vs converted", rel(re(x).logits, ours(x).logits), 1e-12)
        check(f"reload vs HF (tie={tie})", rel(re(x).logits, hf(x).logits))
# options
def conv_cmp(label, **kw):
    try: hf = build(**kw)
    except Exception as e: print(f"SKIP {label}: HF refuses: {type(e).__name__}: {e}"); return
    r = expect_error(label, lambda: from_hf_mamba2(hf))
    if r is not None:
        with torch.no_grad(): print(f"     silent conversion: logits rel err vs HF = {rel(r(x).logits, hf(x).logits):.3e}")
conv_cmp("expand=1.5 (hidden 16 -> inner 24 = 3 heads x 8)", expand=1.5, num_heads=3, n_groups=1)
conv_cmp("time_step_limit=(0.01, 0.05)", time_step_limit=(0.01, 0.05))
conv_cmp("hidden_act=gelu", hidden_act="gelu")
