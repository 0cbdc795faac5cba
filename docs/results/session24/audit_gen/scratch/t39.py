import torch, wonderful_matrices
from transformers import pipeline
ck = "/tmp/audit_gen/run/checkpoint-3"
p = pipeline("text-generation", model=ck, tokenizer=ck, device="cpu")
print("padding_side", p.tokenizer.padding_side)
try:
    out = p(["ROMEO: What light", "Hi"], batch_size=2, max_new_tokens=5, do_sample=False)
    print(out)
except Exception as e:
    print(type(e).__name__, str(e)[:200])
