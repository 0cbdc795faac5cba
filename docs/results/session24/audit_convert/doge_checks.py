from common import *
from transformers import DogeConfig, DogeForCausalLM
from wonderful_matrices.models.convert import from_hf_doge
torch.manual_seed(0)
def build(**kw):
    base = dict(vocab_size=61, hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, keep_window_size=5, rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    base.update(kw)
    cfg = DogeConfig(**base); cfg._attn_implementation = "eager"
    m = randomize(DogeForCausalLM(cfg))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith(".A"): p.copy_(0.5 + 0.5 * torch.rand_like(p))
            elif "dt_proj.weight" in n: p.copy_(torch.randn_like(p))
    return m.double().eval()
def logits_check(label, hf, L=15):
    ours = from_hf_doge(hf)
    x = torch.randint(1, hf.config.vocab_size, (2, L))
    with torch.no_grad():
        check(f"{label} logits", rel(ours(x).logits, hf(x).logits))
    return ours
cases = {
    "default (GQA 4/2, window 5)": {}, "tied": dict(tie_word_embeddings=True), "MHA": dict(num_key_value_heads=4),
    "MQA": dict(num_key_value_heads=1), "attention_bias": dict(attention_bias=True), "eps=0.5": dict(rms_norm_eps=0.5),
    "window >= L (32)": dict(keep_window_size=32), "window 1": dict(keep_window_size=1),
    "odd hidden 30, 5 heads": dict(hidden_size=30, num_attention_heads=5, num_key_value_heads=5),
    "explicit head_dim 10": dict(head_dim=10), "rope_theta 10": dict(rope_parameters={"rope_type": "default", "rope_theta": 10.0}),
}
for label, kw in cases.items():
    try:
        logits_check(label, build(**kw))
    except Exception as e:
        print(f"FAIL {label}: {type(e).__name__}: {e}")
