import torch
from transformers import LlamaConfig, LlamaForCausalLM
cfg = LlamaConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)
m = LlamaForCausalLM(cfg).eval()
ids = torch.randint(1,512,(1,6))
with torch.no_grad():
    o1 = m.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True)
    try:
        o2 = m.generate(o1.sequences, past_key_values=o1.cache, max_new_tokens=4, pad_token_id=0, num_beams=3)
        print("HF llama: no error", o2.shape)
    except Exception as e:
        print("HF llama:", type(e).__name__, str(e)[:200])
