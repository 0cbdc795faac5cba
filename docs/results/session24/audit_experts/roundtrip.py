"""9. save_pretrained / from_pretrained of tiny cheems / doge / jamba models keeps every tensor exactly (expert tables,
sub-keys, MoE experts), in float32 and bfloat16, and AutoModelForCausalLM loads it too."""
import tempfile
import warnings
warnings.filterwarnings("ignore")
import torch
import wonderful_matrices as wm
from transformers import AutoModelForCausalLM

torch.manual_seed(0)
problems = []
for name in ("cheems-tiny", "doge-tiny", "jamba-tiny"):
    for dtype in (torch.float32, torch.bfloat16):
        cfg = wm.presets.get(name)
        model = wm.CheemsForCausalLM(cfg).to(dtype)
        with torch.no_grad():  # move every parameter away from its initialisation
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.37)
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            for loader in ("CheemsForCausalLM", "AutoModelForCausalLM"):
                cls = wm.CheemsForCausalLM if loader == "CheemsForCausalLM" else AutoModelForCausalLM
                loaded = cls.from_pretrained(d, dtype=dtype)
                lsd = loaded.state_dict()
                diff = [k for k in sd if k not in lsd or lsd[k].dtype != sd[k].dtype or not torch.equal(lsd[k], sd[k])]
                extra = [k for k in lsd if k not in sd]
                expert = [k for k in sd if any(s in k for s in ("keys", "down_embed", "up_embed", "gate_up_proj",
                                                                "ffn.down_proj", "router"))]
                x = torch.randint(0, cfg.vocab_size, (2, 9))
                model.eval(); loaded.eval()
                with torch.no_grad():
                    same_logits = torch.equal(model(x).logits, loaded(x).logits)
                bad = bool(diff or extra) or not same_logits
                problems += [(name, str(dtype), loader)] if bad else []
                print(f"{name} {str(dtype)[6:]:8s} {loader:20s}: {len(sd)} tensors ({len(expert)} expert/routing), "
                      f"differing {diff[:4]}, extra {extra[:4]}, logits bitwise equal {same_logits} "
                      f"{'FAIL' if bad else 'ok'}")
print("\nPROBLEMS:", problems)
