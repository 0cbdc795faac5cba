# a fresh process that does NOT import wonderful_matrices
import torch, sys
from transformers import AutoModelForCausalLM, AutoConfig, pipeline
for kw in [{}, {"trust_remote_code": True}]:
    try:
        m = AutoModelForCausalLM.from_pretrained("/tmp/hf_audit/saved_cheems", **kw)
        print(kw, "loaded", type(m).__module__, type(m).__name__)
    except Exception as e:
        print(kw, "ERR", type(e).__name__, str(e)[:300])
try:
    p = pipeline("text-generation", model="/tmp/hf_audit/saved_cheems")
    print("pipeline", p("hello", max_new_tokens=3))
except Exception as e:
    print("pipeline ERR", type(e).__name__, str(e)[:300])
m = AutoModelForCausalLM.from_pretrained("/tmp/hf_audit/saved_cheems_bf16", dtype="auto"); print("bf16 auto ->", m.dtype)
