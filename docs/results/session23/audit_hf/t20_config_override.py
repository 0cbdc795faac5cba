import torch, tempfile
from common import *
from wonderful_matrices import CheemsConfig
from transformers import AutoConfig, AutoModelForCausalLM
cfg = wm.presets.get("cheems-tiny"); d = tempfile.mkdtemp(); cfg.save_pretrained(d)
a, b = cfg.to_dict(), AutoConfig.from_pretrained(d).to_dict()
print("roundtrip diffs:", {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)})
def run(label, f):
    try: print(label, f())
    except Exception as e: print(label, "ERR", type(e).__name__, str(e)[:300])
run("CheemsConfig(**dict, num_hidden_layers=2)", lambda: CheemsConfig(**{**a, "num_hidden_layers": 2}).mixer_types)
run("AutoConfig.from_pretrained(num_hidden_layers=6).mixer_types", lambda: AutoConfig.from_pretrained(d, num_hidden_layers=6).mixer_types)
def big():
    c = AutoConfig.from_pretrained(d, num_hidden_layers=6)
    return len(wm.CheemsForCausalLM(c).model.layers)
run("model with num_hidden_layers=6 override", big)
def small():
    c = AutoConfig.from_pretrained(d, num_hidden_layers=2)
    m = wm.CheemsForCausalLM(c); return [type(l.mixer).__name__ for l in m.model.layers], c.mixer_types
run("model with num_hidden_layers=2 override", small)
