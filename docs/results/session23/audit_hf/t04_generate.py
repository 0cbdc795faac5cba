import torch, sys
from common import *
from transformers import StoppingCriteria, StoppingCriteriaList
name = sys.argv[1] if len(sys.argv) > 1 else "cheems-tiny"
m = llama_model() if name == "hf-llama" else wm_model(name)
m.generation_config.pad_token_id = 0
ids = torch.randint(1, 512, (2, 7), generator=torch.Generator().manual_seed(3))
def run(label, f):
    try:
        r = f(); print(label, r)
    except Exception as e:
        import traceback; print(label, "ERR", type(e).__name__, str(e)[:400])
g = lambda **kw: m.generate(ids, **kw)
run("greedy cache==nocache", lambda: torch.equal(g(max_new_tokens=8, do_sample=False), g(max_new_tokens=8, do_sample=False, use_cache=False)))
def samp():
    torch.manual_seed(5); a = g(max_new_tokens=8, do_sample=True, top_k=50)
    torch.manual_seed(5); b = g(max_new_tokens=8, do_sample=True, top_k=50)
    return torch.equal(a, b), a.shape
run("sample seed", samp)
run("beam4", lambda: g(max_new_tokens=6, num_beams=4, do_sample=False).shape)
run("beam4 nrs2", lambda: g(max_new_tokens=6, num_beams=4, num_return_sequences=2).shape)
run("beam4 == beam nocache", lambda: torch.equal(g(max_new_tokens=6, num_beams=4), g(max_new_tokens=6, num_beams=4, use_cache=False)))
run("sample nrs3", lambda: g(max_new_tokens=5, do_sample=True, num_return_sequences=3).shape)
run("max_length", lambda: g(max_length=12).shape)
def dictout():
    o = g(max_new_tokens=4, return_dict_in_generate=True, output_scores=True, output_logits=True)
    with torch.no_grad(): lg = m(ids).logits[:, -1]
    return type(o).__name__, len(o.scores), o.scores[0].shape, torch.allclose(o.logits[0], lg, atol=1e-5), type(o.past_key_values).__name__
run("dict out", dictout)
def dictout_hid():
    o = g(max_new_tokens=3, return_dict_in_generate=True, output_hidden_states=True, output_attentions=True)
    return len(o.hidden_states), len(o.hidden_states[0]), o.hidden_states[0][0].shape, o.hidden_states[1][0].shape, len(o.attentions), [None if a is None else tuple(a.shape) for a in o.attentions[1]]
run("dict hid/attn", dictout_hid)
class StopAfter(StoppingCriteria):
    def __call__(self, input_ids, scores, **kw): return torch.full((input_ids.shape[0],), input_ids.shape[1] >= 10, dtype=torch.bool)
run("stopping", lambda: g(max_new_tokens=20, stopping_criteria=StoppingCriteriaList([StopAfter()])).shape)
def eos():
    full = g(max_new_tokens=8)
    eos_id = int(full[0, 9])
    out = g(max_new_tokens=8, eos_token_id=eos_id, pad_token_id=0)
    return full[0].tolist(), out.tolist()
run("eos", eos)
def leftpad():
    # row 1 padded on the left by 3 vs running alone
    short = ids[1:, 3:]
    padded = torch.cat([ids[:1], torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1)])
    mask = torch.ones_like(padded); mask[1, :3] = 0
    ob = m.generate(padded, attention_mask=mask, max_new_tokens=8, pad_token_id=0)
    oa = m.generate(short, max_new_tokens=8)
    o0 = m.generate(ids[:1], max_new_tokens=8)
    return torch.equal(ob[1, 7:], oa[0, 4:]), torch.equal(ob[0], o0[0])
run("leftpad", leftpad)
def leftpad_nocache():
    short = ids[1:, 3:]
    padded = torch.cat([ids[:1], torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1)])
    mask = torch.ones_like(padded); mask[1, :3] = 0
    a = m.generate(padded, attention_mask=mask, max_new_tokens=8, pad_token_id=0)
    b = m.generate(padded, attention_mask=mask, max_new_tokens=8, pad_token_id=0, use_cache=False)
    return torch.equal(a, b)
run("leftpad cache==nocache", leftpad_nocache)
def reuse():
    out = g(max_new_tokens=4, return_dict_in_generate=True)
    pkv = out.past_key_values
    full = g(max_new_tokens=8)
    out2 = m.generate(out.sequences, past_key_values=pkv, max_new_tokens=4)
    return torch.equal(out2, full)
run("pkv reuse", reuse)
