import torch, tempfile, wonderful_matrices as wm
from transformers import AutoModelForCausalLM
torch.manual_seed(0)
m = wm.CheemsForCausalLM(wm.presets.get("cheems-tiny", tie_word_embeddings=False)).eval()
d = tempfile.mkdtemp(); m.save_pretrained(d); m2 = AutoModelForCausalLM.from_pretrained(d).eval()
ids = torch.arange(1, 10)[None]
print([(n, p.data_ptr() % 64, p.is_contiguous()) for n, p in m2.named_parameters() if p.data_ptr() % 64 or not p.is_contiguous()][:10])
# find first layer output that differs
h1, h2 = m.model(ids, output_hidden_states=True).hidden_states, m2.model(ids, output_hidden_states=True).hidden_states
print([torch.equal(a, b) for a, b in zip(h1, h2)])
for (n,p),(n2,q) in zip(m.named_parameters(), m2.named_parameters()):
    if p.stride()!=q.stride(): print("stride", n, p.stride(), q.stride())
