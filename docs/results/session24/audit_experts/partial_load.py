"""9. from_pretrained of a checkpoint missing some CDMoE tensors. docs/architecture.md: "_init_weights initialises every
parameter as its layer's constructor does (... CDMoE keys and expert tables ...), so from_pretrained with missing keys
gives finite logits". Expected: what the checkpoint has loads exactly, what it lacks is drawn as the constructor does
(expert rows ~ N(0, 1/d), sub-keys ~ N(0, 1/(d_r/2))), logits finite."""
import tempfile
import warnings
warnings.filterwarnings("ignore")
import transformers
transformers.logging.set_verbosity_error()
import torch
from safetensors.torch import load_file, save_file
import wonderful_matrices as wm

torch.manual_seed(0)
cfg = wm.presets.get("cheems-tiny")
model = wm.CheemsForCausalLM(cfg)
with torch.no_grad():
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.37)
sd = {k: v.clone() for k, v in model.state_dict().items()}
x = torch.randint(0, cfg.vocab_size, (2, 9))
L = "model.layers.0.ffn."
for missing in ([L + "up_embed.weight"], [L + "down_embed.weight", L + "up_embed.weight"], [L + "keys"],
                [L + "keys", L + "down_embed.weight", L + "up_embed.weight"]):
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        f = f"{d}/model.safetensors"
        tensors = load_file(f)
        for k in missing:
            del tensors[k]
        save_file(tensors, f, metadata={"format": "pt"})
        loaded = wm.CheemsForCausalLM.from_pretrained(d).eval()
    lsd = loaded.state_dict()
    changed = [k for k in sd if k not in missing and not torch.equal(sd[k], lsd[k])]
    with torch.no_grad():
        logits = loaded(x).logits
    print(f"missing {[k.split('.')[-2] if k.endswith('weight') else k.split('.')[-1] for k in missing]}:")
    print(f"   loaded tensors changed: {changed or 'none'}")
    for k in missing:
        w = lsd[k]
        expect = cfg.hidden_size ** -0.5 if "embed" in k else (cfg.cdmoe_retrieval_dim // 2) ** -0.5
        print(f"   {k}: finite {torch.isfinite(w).all().item()}, std {w.float().std().item():.4g} (constructor draws "
              f"std {expect:.4f}), max |w| {w.abs().max().item():.3g}")
    print(f"   logits finite: {torch.isfinite(logits).all().item()}")
