"""Behaviour every ``-tiny`` preset must have: causality, cache == full forward, generate, save/load, padding."""
import pytest
import torch
from transformers import AutoModelForCausalLM

import wonderful_matrices as wm
from conftest import rel_err
from wonderful_matrices.models import CheemsCache

TINY = [n for n in wm.presets.names() if n.endswith("-tiny")]


def make(name, dtype=torch.float32, **overrides):
    torch.manual_seed(0)
    cfg = wm.presets.get(name, **overrides)
    return wm.CheemsForCausalLM(cfg).to(dtype).eval()


def tokens(model, b, l, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (b, l), generator=g)


@pytest.mark.parametrize("name", TINY)
def test_no_logit_depends_on_a_later_token(name):
    model = make(name)
    x = tokens(model, 2, 21)
    y = x.clone()
    y[:, 13:] = tokens(model, 2, 8, seed=2)
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    # kernels may group sums differently when later tokens change: equal up to float32 rounding
    assert rel_err(a[:, :13], b[:, :13]) < 1e-6
    assert rel_err(a[:, 13:], b[:, 13:]) > 1e-3


@pytest.mark.parametrize("name", TINY)
def test_prefill_then_steps_equals_full_forward(name):
    model = make(name)
    x = tokens(model, 2, 23)
    with torch.no_grad():
        full = model(x, use_cache=False).logits
        cache = CheemsCache(model.config)
        parts = [model(x[:, :9], past_key_values=cache, use_cache=True).logits]
        for t in range(9, 14):
            parts.append(model(x[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
        parts.append(model(x[:, 14:], past_key_values=cache, use_cache=True).logits)
    assert cache.get_seq_length() == 23
    assert rel_err(torch.cat(parts, 1), full) < 1e-5


@pytest.mark.parametrize("name", TINY)
def test_generate_greedy_equals_argmax_loop(name):
    model = make(name)
    x = tokens(model, 2, 6)
    with torch.no_grad():
        out = model.generate(x, max_new_tokens=6, do_sample=False, pad_token_id=0)
        seq = x
        for _ in range(6):
            nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("name", TINY)
def test_sampling_and_beam_search(name):
    model = make(name)
    x = tokens(model, 2, 5)
    with torch.no_grad():
        torch.manual_seed(3)
        s = model.generate(x, max_new_tokens=4, do_sample=True, top_k=20, temperature=1.0, pad_token_id=0)
        assert s.shape == (2, 9) and torch.equal(s[:, :5], x)
        kw = dict(max_new_tokens=4, num_beams=3, do_sample=False, pad_token_id=0, num_return_sequences=2)
        with_cache = model.generate(x, use_cache=True, **kw)
        without = model.generate(x, use_cache=False, **kw)
    assert with_cache.shape == (4, 9)
    assert torch.equal(with_cache, without)


@pytest.mark.parametrize("name", TINY)
def test_save_and_load_give_identical_logits(name, tmp_path):
    model = make(name, dtype=torch.float32)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is wm.CheemsForCausalLM
    x = tokens(model, 2, 17)
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)
    for (n1, b1), (n2, b2) in zip(model.named_buffers(), loaded.named_buffers()):
        assert n1 == n2 and torch.equal(b1, b2), n1


@pytest.mark.parametrize("name", TINY)
def test_left_padded_batch_equals_single_rows(name):
    model = make(name)
    rows = [tokens(model, 1, 11, seed=5)[0], tokens(model, 1, 2, seed=7)[0]]
    L = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, L - len(r):] = r
        mask[i, L - len(r):] = 1
    with torch.no_grad():
        batched = model(ids, attention_mask=mask).logits
        assert not torch.isnan(batched).any()
        for i, r in enumerate(rows):
            single = model(r[None]).logits[0]
            assert rel_err(batched[i, L - len(r):], single) < 1e-5
        out = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
        for i, r in enumerate(rows):
            alone = model.generate(r[None], max_new_tokens=4, do_sample=False, pad_token_id=0)
            assert torch.equal(out[i, L:], alone[0, len(r):])


@pytest.mark.parametrize("name", [n for n in TINY if "dma" in wm.presets.get(n).layer_types])
def test_dma_cache_stays_within_window(name):
    model = make(name)
    w = model.config.keep_window
    dma = [i for i, t in enumerate(model.config.layer_types) if t == "dma"]
    cache = CheemsCache(model.config)
    x = tokens(model, 2, 3)
    with torch.no_grad():
        out = model(x, past_key_values=cache, use_cache=True)
        for _ in range(3 * w):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            out = model(nxt, past_key_values=cache, use_cache=True)
            assert all(cache.kv_length(i) <= w for i in dma)
    assert all(cache.kv_length(i) == w for i in dma)


@pytest.mark.parametrize("name", TINY)
def test_bf16_forward_backward_has_no_nan(name):
    model = make(name, dtype=torch.bfloat16).train()
    x = tokens(model, 2, 19)
    out = model(x, labels=x)  # training with labels: the fused loss, no logits
    out.loss.backward()
    assert out.logits is None and torch.isfinite(out.loss)
    assert torch.isfinite(model(x, labels=x, skip_logits=False).logits.float()).all()
    for n, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad.float()).all(), n


@pytest.mark.parametrize("name", TINY)
def test_loss_is_shifted_cross_entropy_plus_aux(name):
    model = make(name)
    x = tokens(model, 2, 12)
    labels = x.clone()
    labels[0, :4] = -100
    out = model(x, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, model.config.vocab_size)
    ce = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    aux = 0.0 if out.aux_loss is None else out.aux_loss
    assert rel_err(out.loss, ce + aux) < 1e-6


@pytest.mark.parametrize("name", ["cheems-tiny", "jamba-tiny"])
def test_aux_loss_is_the_sum_of_the_layers_losses_in_their_precision(name):
    """float64 layers' balance losses are summed in float64 (not rounded to float32 first)."""
    model = make(name).double().train()
    out = model(tokens(model, 2, 12))
    layers = [block.aux_loss() for block in model.model.layers if block.aux_loss() is not None]
    assert layers and out.aux_loss.dtype == torch.float64
    assert rel_err(out.aux_loss, torch.stack(layers).sum()) < 1e-15


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("name", TINY)
def test_gradient_checkpointing_gives_same_gradients(name, reentrant):
    # reentrant checkpointing checkpoints only a block's positional tensors: the previous block's deferred update,
    # once a keyword, made its backward run twice (a RuntimeError); it cannot keep a balance loss's gradient (the
    # block's forward runs without autograd), so a model with one refuses it and trains without the loss
    overrides = {"balance_loss_weight": 0.0} if reentrant else {}
    model = make(name, **overrides).train()
    x = tokens(model, 2, 10)
    model(x, labels=x).loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model(x, labels=x).loss.backward()
    assert set(ref) == {n for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        if n in ref:
            assert rel_err(p.grad, ref[n]) < 1e-5, n
    balanced = make(name).train()
    if any(getattr(block.ffn, "balance_loss_weight", 0) > 0 for block in balanced.model.layers):
        balanced.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        with pytest.raises(ValueError, match="use_reentrant.*load-balancing loss"):
            balanced(x, labels=x)


@pytest.mark.parametrize("name", TINY)
def test_autocast_norms_store_what_a_single_cast_reads(name, monkeypatch):
    """Under bf16 autocast a norm before a module that reads its input through one cast (SSD's in_proj, CDMoE's
    cast) stores bf16, and SSD's gated norm stores what out_proj computes in; inputs read by several linears
    (attention's q/k/v, a SwiGLU's gate/up) stay float32. Loss and every gradient equal, bit for bit, the run whose
    norms ignore ``out_dtype`` (float32 outputs cast by the readers)."""
    from wonderful_matrices.layers import RMSNorm
    from wonderful_matrices.layers.ssd import GatedRMSNorm

    model = make(name).train()
    x = tokens(model, 2, 19)
    seen = {}
    hooks = [block.mixer.register_forward_pre_hook(lambda m, args: seen.__setitem__(m, args[0].dtype))
             for block in model.model.layers]

    def step():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x, labels=x).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    loss, grads = step()
    for hook in hooks:
        hook.remove()
    for mixer, dtype in seen.items():
        assert dtype == (torch.bfloat16 if getattr(mixer, "single_cast_input", False) else torch.float32)
    norm_forward, gated_forward = RMSNorm.forward, GatedRMSNorm.forward
    monkeypatch.setattr(RMSNorm, "forward", lambda self, x, residual=None, out_dtype=None:
                        norm_forward(self, x, residual))
    monkeypatch.setattr(GatedRMSNorm, "forward", lambda self, x, gate, out_dtype=None:
                        gated_forward(self, x, gate).to(out_dtype or x.dtype))
    ref_loss, ref_grads = step()
    assert torch.equal(loss, ref_loss)
    assert len(grads) == len(ref_grads) and all(torch.equal(a, b) for a, b in zip(grads, ref_grads))
