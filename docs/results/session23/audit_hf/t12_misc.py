import torch, sys, tempfile, copy
import torch.nn.functional as F
from common import *
from transformers import AutoModelForCausalLM, AutoModel, AutoConfig
name = sys.argv[1] if len(sys.argv) > 1 else "cheems-tiny"
mk = (lambda **kw: llama_model(**kw)) if name == "hf-llama" else (lambda **kw: wm_model(name, **kw))
m = mk()
ids = torch.randint(1, 512, (2, 9), generator=torch.Generator().manual_seed(3))
def run(label, f):
    try: print(label, f())
    except Exception as e: print(label, "ERR", type(e).__name__, str(e)[:300])
def gen_embeds():
    e = m.get_input_embeddings()(ids)
    a = m.generate(inputs_embeds=e, max_new_tokens=5, do_sample=False)
    b = m.generate(ids, max_new_tokens=5, do_sample=False)
    return a.shape, torch.equal(a, b[:, 9:])
run("generate(inputs_embeds)", gen_embeds)
def multiturn():
    o = m.generate(ids, max_new_tokens=4, return_dict_in_generate=True, do_sample=False)
    extra = torch.randint(1, 512, (2, 3), generator=torch.Generator().manual_seed(9))
    turn2 = torch.cat([o.sequences, extra], 1)
    a = m.generate(turn2, past_key_values=o.past_key_values, max_new_tokens=4, do_sample=False)
    b = m.generate(turn2, max_new_tokens=4, do_sample=False)
    return torch.equal(a, b)
run("multi-turn cache reuse", multiturn)
def eager_attn():
    d = tempfile.mkdtemp(); m.save_pretrained(d)
    mm = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager")
    o = mm(ids, output_attentions=True)
    return mm.config._attn_implementation, [None if a is None else tuple(a.shape) for a in o.attentions]
run("attn_implementation=eager", eager_attn)
def set_attn():
    mm = copy.deepcopy(m); mm.set_attn_implementation("eager"); mm.config.output_attentions = True
    return len(mm(ids).attentions)
run("set_attn_implementation", set_attn)
def automodel():
    d = tempfile.mkdtemp(); m.save_pretrained(d)
    base = AutoModel.from_pretrained(d)
    return type(base).__name__, torch.allclose(base(ids).last_hidden_state, m.model(ids).last_hidden_state)
run("AutoModel from CLM folder", automodel)
def from_config():
    mm = AutoModelForCausalLM.from_config(m.config); return type(mm).__name__
run("from_config", from_config)
def fp16():
    mm = copy.deepcopy(m).half(); return mm(ids).logits.dtype, torch.isfinite(mm(ids).logits).all().item()
run("fp16 forward", fp16)
def bf16_gen():
    mm = copy.deepcopy(m).to(torch.bfloat16)
    a = mm.generate(ids, max_new_tokens=5, do_sample=False); b = mm.generate(ids, max_new_tokens=5, do_sample=False, use_cache=False)
    return a.shape, torch.equal(a, b)
run("bf16 generate cache==nocache", bf16_gen)
def loss_pad():
    mask = torch.ones_like(ids); mask[1, -3:] = 0
    lab = ids.masked_fill(mask == 0, -100)
    o = m(ids, attention_mask=mask, labels=lab)
    manual = F.cross_entropy(o.logits[:, :-1].reshape(-1, 512), lab[:, 1:].reshape(-1))
    return o.loss.item(), manual.item()
run("loss with padding", loss_pad)
def shards():
    d = tempfile.mkdtemp(); m.save_pretrained(d, max_shard_size="100KB")
    import os; files = os.listdir(d)
    mm = AutoModelForCausalLM.from_pretrained(d)
    return len([f for f in files if f.endswith("safetensors")]), torch.equal(mm(ids).logits, m(ids).logits)
run("sharded save/reload", shards)
def untied():
    mm = mk(tie_word_embeddings=False)
    d = tempfile.mkdtemp(); mm.save_pretrained(d)
    m2 = AutoModelForCausalLM.from_pretrained(d)
    return mm.lm_head.weight.data_ptr() != mm.get_input_embeddings().weight.data_ptr(), torch.equal(m2(ids).logits, mm(ids).logits)
run("untied save/reload", untied)
def resize_save():
    mm = copy.deepcopy(m); mm.resize_token_embeddings(520)
    d = tempfile.mkdtemp(); mm.save_pretrained(d)
    m2 = AutoModelForCausalLM.from_pretrained(d)
    x = torch.tensor([[515, 3, 4]])
    return m2.config.vocab_size, torch.equal(m2(x).logits, mm(x).logits)
run("resize then save/reload", resize_save)
def train_mode_generate():
    mm = copy.deepcopy(m).train()
    return mm.generate(ids, max_new_tokens=3, do_sample=False).shape
run("generate in train mode", train_mode_generate)
def config_no_cache():
    mm = copy.deepcopy(m); mm.config.use_cache = False
    return torch.equal(mm.generate(ids, max_new_tokens=4), m.generate(ids, max_new_tokens=4))
run("config.use_cache=False generate", config_no_cache)
run("get_decoder", lambda: type(m.get_decoder()).__name__)
run("can_generate", lambda: m.can_generate())
def device_map():
    d = tempfile.mkdtemp(); m.save_pretrained(d)
    mm = AutoModelForCausalLM.from_pretrained(d, device_map="cpu"); return torch.equal(mm(ids).logits, m(ids).logits)
run("device_map=cpu", device_map)
def device_map_auto():
    d = tempfile.mkdtemp(); m.save_pretrained(d)
    mm = AutoModelForCausalLM.from_pretrained(d, device_map="auto"); return torch.equal(mm(ids).logits, m(ids).logits)
run("device_map=auto", device_map_auto)
def reload_init_check():
    # loading must not re-init loaded weights
    d = tempfile.mkdtemp(); m.save_pretrained(d)
    mm = AutoModelForCausalLM.from_pretrained(d)
    sd1, sd2 = m.state_dict(), mm.state_dict()
    return [k for k in sd1 if not torch.equal(sd1[k], sd2[k])], set(sd1) ^ set(sd2)
run("state_dict after reload", reload_init_check)
