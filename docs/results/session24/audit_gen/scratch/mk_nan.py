import torch, shutil, wonderful_matrices
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained("/tmp/audit_gen/run/checkpoint-3")
with torch.no_grad():
    m.model.layers[1].mixer.out_proj.weight[0, 0] = float("nan")
m.save_pretrained("/tmp/audit_gen/nanmodel")
shutil.copy("/tmp/audit_gen/run/tokenizer/tokenizer.json", "/tmp/audit_gen/nanmodel/")
shutil.copy("/tmp/audit_gen/run/tokenizer/tokenizer_config.json", "/tmp/audit_gen/nanmodel/")
# a buffer-only non-finite? check which buffers exist
print([n for n,_ in m.named_buffers()][:10])
