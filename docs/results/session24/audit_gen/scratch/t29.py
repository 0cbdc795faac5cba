import torch, wonderful_matrices
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained("/tmp/audit_gen/run/checkpoint-3", dtype=torch.float32).eval()
ids = torch.tensor([[5, 6, 7]])
for tk in [None, 0]:
    with torch.no_grad():
        torch.manual_seed(0)
        o = m.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.8, top_k=tk, top_p=1.0, max_new_tokens=3,
                       pad_token_id=0, eos_token_id=0, output_scores=True, return_dict_in_generate=True)
    print("top_k=", tk, "tokens kept per step:", [int(torch.isfinite(s).sum()) for s in o.scores], "vocab", m.config.vocab_size)
