from common import *
from transformers import LlamaConfig, LlamaForCausalLM
from wonderful_matrices.models.convert import from_hf_llama
torch.manual_seed(0)
def build(**kw):
    base = dict(vocab_size=61, hidden_size=24, intermediate_size=40, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2)
    base.update(kw)
    cfg = LlamaConfig(**base); cfg._attn_implementation = "eager"
    return randomize(LlamaForCausalLM(cfg)).double().eval()
x = torch.randint(0, 61, (1, 40))
def conv_cmp(label, **kw):
    try:
        hf = build(**kw)
    except Exception as e:
        print(f"SKIP {label}: HF refuses config: {type(e).__name__}: {e}"); return
    print(f"--- {label}: hf rope_parameters={getattr(hf.config, 'rope_parameters', None)}")
    r = expect_error(label, lambda: from_hf_llama(hf))
    if r is not None:
        with torch.no_grad():
            print(f"     silent conversion: rel err of logits vs HF = {rel(r(x).logits, hf(x).logits):.3e}")
for label, rp in {
    "rope linear x4": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
    "rope dynamic x4": {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0},
    "rope llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8, "rope_theta": 10000.0},
    "rope yarn": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 8},
}.items():
    conv_cmp(label, rope_parameters=rp, max_position_embeddings=32)
conv_cmp("legacy rope_scaling kwarg linear", rope_scaling={"type": "linear", "factor": 4.0}, max_position_embeddings=32)
conv_cmp("legacy rope_theta kwarg only", rope_theta=123.0)
conv_cmp("hidden_act gelu", hidden_act="gelu")
conv_cmp("mlp_bias", mlp_bias=True)
conv_cmp("pretraining_tp=2", pretraining_tp=2)
conv_cmp("attention_dropout=0.1 (eval: harmless)", attention_dropout=0.1)
