# tie_word_embeddings=False: save_pretrained -> from_pretrained does not reproduce the model
import torch, tempfile, json, os
import wonderful_matrices as wm
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
torch.manual_seed(0)
cfg = wm.presets.get(__import__("sys").argv[1], tie_word_embeddings=False)
m = wm.CheemsForCausalLM(cfg).eval()
print("tied in memory?", m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr())
d = tempfile.mkdtemp(); m.save_pretrained(d)
print("config tie_word_embeddings:", json.load(open(os.path.join(d, "config.json"))).get("tie_word_embeddings"))
print("keys in file with 'lm_head'/'embed':", [k for k in load_file(os.path.join(d, "model.safetensors")) if "lm_head" in k or "embed" in k])
m2 = AutoModelForCausalLM.from_pretrained(d).eval()
print("reloaded tied?", m2.lm_head.weight.data_ptr() == m2.model.embed_tokens.weight.data_ptr(), "config:", m2.config.tie_word_embeddings)
for k in ["lm_head.weight", "model.embed_tokens.weight"]:
    print(k, "equal after reload:", torch.equal(m.state_dict()[k], m2.state_dict()[k]))
ids = torch.arange(1, 10)[None]
print("logits equal:", torch.equal(m(ids).logits, m2(ids).logits))
sd1, sd2 = m.state_dict(), m2.state_dict()
print("differing tensors:", [k for k in sd1 if not torch.equal(sd1[k], sd2[k])], "missing/extra:", set(sd1) ^ set(sd2))
print("training flags", m.training, m2.training, "logits again equal:", torch.equal(m(ids).logits, m(ids).logits), torch.equal(m2(ids).logits, m2(ids).logits))
print("max diff", (m(ids).logits - m2(ids).logits).abs().max().item())
