# from_pretrained(folder, num_hidden_layers=2) builds a model whose config is inconsistent; saving it and reloading fails
import torch, tempfile, json
from common import *
from transformers import AutoModelForCausalLM
m = wm_model("cheems-tiny"); d = tempfile.mkdtemp(); m.save_pretrained(d)
mm = AutoModelForCausalLM.from_pretrained(d, num_hidden_layers=2)
print("loaded: layers", len(mm.model.layers), "config.num_hidden_layers", mm.config.num_hidden_layers, "config.mixer_types", mm.config.mixer_types)
d2 = tempfile.mkdtemp(); mm.save_pretrained(d2)
c = json.load(open(d2 + "/config.json")); print("saved config:", c["num_hidden_layers"], c["mixer_types"], c["ffn_types"])
try:
    AutoModelForCausalLM.from_pretrained(d2); print("reload OK")
except Exception as e: print("reload ERR", type(e).__name__, str(e)[:300])
try:
    AutoModelForCausalLM.from_pretrained(d, num_hidden_layers=6); print("N=6 OK")
except Exception as e: print("from_pretrained(num_hidden_layers=6) ERR", type(e).__name__, str(e)[:300])
