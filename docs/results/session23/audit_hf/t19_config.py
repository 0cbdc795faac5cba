import torch, tempfile, json
from common import *
from wonderful_matrices import CheemsConfig
from transformers import AutoConfig, AutoModelForCausalLM
def run(label, f):
    try: print(label, f())
    except Exception as e: print(label, "ERR", type(e).__name__, str(e)[:300])
cfg = wm.presets.get("cheems-tiny")
d = tempfile.mkdtemp(); cfg.save_pretrained(d)
run("to_dict roundtrip", lambda: CheemsConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict())
run("save/load roundtrip", lambda: AutoConfig.from_pretrained(d).to_dict() == cfg.to_dict())
run("for_model", lambda: type(AutoConfig.for_model("cheems")).__name__)
run("default CheemsConfig()", lambda: (CheemsConfig().mixer_types[:3], CheemsConfig().num_hidden_layers))
run("from_pretrained num_hidden_layers=2", lambda: AutoConfig.from_pretrained(d, num_hidden_layers=2).mixer_types)
run("from_pretrained vocab override", lambda: AutoConfig.from_pretrained(d, vocab_size=600).vocab_size)
run("to_diff_dict", lambda: len(cfg.to_diff_dict()))
run("repr", lambda: len(repr(cfg)))
run("json keys mixer/layer", lambda: {k: v for k, v in json.load(open(d + "/config.json")).items() if "type" in k})
def trunc_model():
    m = wm_model("cheems-tiny"); md = tempfile.mkdtemp(); m.save_pretrained(md)
    mm = AutoModelForCausalLM.from_pretrained(md, num_hidden_layers=2)
    return mm.config.num_hidden_layers, len(mm.model.layers), mm.config.mixer_types
run("model from_pretrained num_hidden_layers=2", trunc_model)
def llama_trunc():
    m = llama_model(); md = tempfile.mkdtemp(); m.save_pretrained(md)
    mm = AutoModelForCausalLM.from_pretrained(md, num_hidden_layers=1); return len(mm.model.layers)
run("HF llama from_pretrained num_hidden_layers=1", llama_trunc)
run("eq configs", lambda: wm.presets.get("cheems-tiny") == wm.presets.get("cheems-tiny"))
run("config.update", lambda: (cfg.update({"use_cache": False}), cfg.use_cache))
