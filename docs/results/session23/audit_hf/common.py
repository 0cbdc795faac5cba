import torch, transformers, warnings
import wonderful_matrices as wm
from transformers import LlamaConfig, LlamaForCausalLM

def wm_model(name="cheems-tiny", seed=0, **kw):
    torch.manual_seed(seed)
    cfg = wm.presets.get(name, **kw)
    return wm.CheemsForCausalLM(cfg).eval()

def llama_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, **kw)
    return LlamaForCausalLM(cfg).eval()

def tokenizer():
    from wonderful_matrices.data.tokenizer import train_bpe
    texts = ["the quick brown fox jumps over the lazy dog. " * 20, "hello world, this is a test of the tokenizer. " * 20] * 5
    return train_bpe(texts, 300)
