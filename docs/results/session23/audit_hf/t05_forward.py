import torch, sys
import torch.nn.functional as F
from common import *
name = sys.argv[1] if len(sys.argv) > 1 else "cheems-tiny"
m = llama_model() if name == "hf-llama" else wm_model(name)
ids = torch.randint(1, 512, (2, 9), generator=torch.Generator().manual_seed(3))
def run(label, f):
    try: print(label, f())
    except Exception as e: print(label, "ERR", type(e).__name__, str(e)[:400])
def loss():
    lab = ids.clone(); lab[0, :3] = -100; lab[1, -2:] = -100
    o = m(ids, labels=lab)
    manual = F.cross_entropy(o.logits[:, :-1].reshape(-1, 512), lab[:, 1:].reshape(-1), ignore_index=-100)
    return o.loss.item(), manual.item(), getattr(o, "aux_loss", None)
run("loss eval", loss)
def loss_train():
    m.train(); lab = ids.clone(); lab[0, :3] = -100
    o = m(ids, labels=lab)
    with torch.no_grad():
        lg = m(ids).logits
    manual = F.cross_entropy(lg[:, :-1].reshape(-1, 512), lab[:, 1:].reshape(-1))
    m.eval()
    return o.loss.item(), manual.item(), o.logits is None, getattr(o, "aux_loss", None)
run("loss train", loss_train)
def tup():
    o = m(ids, labels=ids, return_dict=False)
    return type(o).__name__, len(o), [type(x).__name__ for x in o]
run("return_dict=False", tup)
def tup2():
    o = m(ids, return_dict=False, use_cache=False)
    return len(o), [type(x).__name__ for x in o]
run("return_dict=False nocache", tup2)
def embeds():
    e = m.get_input_embeddings()(ids)
    return torch.allclose(m(inputs_embeds=e).logits, m(ids).logits, atol=1e-6)
run("inputs_embeds", embeds)
def hid():
    o = m(ids, output_hidden_states=True)
    hs = o.hidden_states
    base = m.model(ids)
    return len(hs), torch.allclose(hs[0], m.get_input_embeddings()(ids)), torch.allclose(hs[-1], base.last_hidden_state, atol=1e-6)
run("hidden", hid)
def att():
    o = m(ids, output_attentions=True)
    return [None if a is None else (tuple(a.shape), round(a.sum(-1).mean().item(), 4)) for a in o.attentions]
run("attn", att)
def att_cfg():
    m.config.output_attentions = True
    try:
        o = m(ids); return o.attentions is not None
    finally: m.config.output_attentions = False
run("attn via config", att_cfg)
run("num_parameters", lambda: (m.num_parameters(), m.num_parameters(exclude_embeddings=True), sum(p.numel() for p in m.parameters())))
run("tied", lambda: m.lm_head.weight.data_ptr() == m.get_input_embeddings().weight.data_ptr())
def resize():
    import copy; mm = copy.deepcopy(m)
    e = mm.resize_token_embeddings(600)
    o = mm(torch.tensor([[599, 3, 4]]))
    tied = mm.lm_head.weight.data_ptr() == mm.get_input_embeddings().weight.data_ptr()
    same = torch.allclose(mm(ids).logits[..., :512], m(ids).logits, atol=1e-5)
    e2 = mm.resize_token_embeddings(256)
    o2 = mm(torch.tensor([[200, 3]]))
    return e.weight.shape, o.logits.shape, mm.config.vocab_size, tied, same, o2.logits.shape, mm.config.vocab_size
run("resize", resize)
def resize_mult():
    import copy; mm = copy.deepcopy(m)
    e = mm.resize_token_embeddings(600, pad_to_multiple_of=64)
    return e.weight.shape, mm.config.vocab_size, mm(ids).logits.shape
run("resize mult", resize_mult)
def setemb():
    import copy; mm = copy.deepcopy(m)
    new = torch.nn.Embedding(512, 64); mm.set_input_embeddings(new); mm.tie_weights()
    return mm.lm_head.weight is new.weight or mm.lm_head.weight.data_ptr() == new.weight.data_ptr()
run("set_input_embeddings+tie", setemb)
def bf16():
    import copy; mm = copy.deepcopy(m).to(torch.bfloat16)
    o = mm(ids, labels=ids)
    return o.logits.dtype, o.loss.dtype, o.loss.item()
run("bf16", bf16)
def gc():
    import copy; mm = copy.deepcopy(m).train()
    mm.gradient_checkpointing_enable()
    o = mm(ids, labels=ids); o.loss.backward()
    g1 = mm.model.embed_tokens.weight.grad.clone()
    m2 = copy.deepcopy(m).train(); o2 = m2(ids, labels=ids); o2.loss.backward()
    return mm.is_gradient_checkpointing, torch.allclose(g1, m2.model.embed_tokens.weight.grad, atol=1e-6), o.loss.item(), o2.loss.item()
run("grad ckpt", gc)
def gc_reentrant():
    import copy; mm = copy.deepcopy(m).train()
    mm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    mm.enable_input_require_grads()
    o = mm(ids, labels=ids); o.loss.backward()
    return mm.model.layers[0].mixer_norm.weight.grad is not None
run("grad ckpt reentrant", gc_reentrant)
def pos_ids():
    p = torch.arange(9).expand(2, 9)
    return torch.allclose(m(ids, position_ids=p).logits, m(ids).logits, atol=1e-6)
run("position_ids explicit", pos_ids)
def logits_to_keep():
    return m(ids, logits_to_keep=1).logits.shape
run("logits_to_keep", logits_to_keep)
def mask_right_pad():
    mask = torch.ones_like(ids); mask[1, -3:] = 0
    a = m(ids, attention_mask=mask).logits[1, :6]
    b = m(ids[1:, :6]).logits[0]
    return torch.allclose(a, b, atol=1e-5)
run("right pad", mask_right_pad)
def mask_left_pad():
    mask = torch.ones_like(ids); mask[1, :3] = 0
    a = m(ids, attention_mask=mask).logits[1, 3:]
    b = m(ids[1:, 3:]).logits[0]
    return torch.allclose(a, b, atol=1e-5), (a-b).abs().max().item()
run("left pad", mask_left_pad)
def mask4d():
    mask = torch.ones_like(ids)
    return m(ids, attention_mask=mask.float()).logits.shape
run("float mask", mask4d)
