import torch, copy, wonderful_matrices as wm
torch.manual_seed(0)
m = wm.CheemsForCausalLM(wm.presets.get("cheems-tiny", tie_word_embeddings=False)).eval()
ids = torch.arange(1, 10)[None]
for i in range(3):
    c = copy.deepcopy(m); print("deepcopy equal:", torch.equal(c(ids).logits, m(ids).logits), [p.data_ptr() % 64 for p in c.parameters()][:3])
