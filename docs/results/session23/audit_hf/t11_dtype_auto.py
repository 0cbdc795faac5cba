import torch, wonderful_matrices
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained("/tmp/hf_audit/saved_cheems_bf16", dtype="auto"); print("bf16 saved, dtype=auto ->", m.dtype)
m = AutoModelForCausalLM.from_pretrained("/tmp/hf_audit/saved_cheems_bf16"); print("bf16 saved, default ->", m.dtype)
m = AutoModelForCausalLM.from_pretrained("/tmp/hf_audit/saved_cheems"); 
ref = torch.load("/tmp/hf_audit/saved_cheems/ref_logits.pt")
print("fresh-process reload exact:", torch.equal(m(torch.arange(1, 10)[None]).logits, ref))
