import torch, sys
sys.path.insert(0, "/tmp/hf_audit")
from common import wm_model, tokenizer
m = wm_model("cheems-tiny"); m.save_pretrained("/tmp/hf_audit/saved_cheems"); tokenizer().save_pretrained("/tmp/hf_audit/saved_cheems")
m2 = wm_model("cheems-tiny").to(torch.bfloat16); m2.save_pretrained("/tmp/hf_audit/saved_cheems_bf16")
ids = torch.arange(1, 10)[None]
torch.save(m(ids).logits.detach(), "/tmp/hf_audit/saved_cheems/ref_logits.pt")
