"""Whole models on a CUDA device: GraphedDecoder against eager decoding (also inside generate), packed rows of
every tiny preset against their documents alone, and the fused bf16 training step against the plain-PyTorch one.

Skipped where there is no CUDA device. On a GPU machine: ``AREA=models OUT=DIR bash scripts/gpu_check.sh`` (or
``python -m pytest tests/models/test_models_cuda.py``).
"""
import pytest
import torch

import wonderful_matrices as wm
from conftest import rel_err
from cuda_helpers import TOL, needs_cuda

pytestmark = needs_cuda


@pytest.mark.parametrize("name,static,records", [("cheems-tiny", False, True), ("doge-tiny", False, True),
                                                 ("mamba2-tiny", False, True), ("llama-tiny", False, False),
                                                 ("llama-tiny", True, True), ("jamba-tiny", True, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graphed_decoder_replays_the_eager_steps(name, static, records, dtype):
    # GraphedDecoder records the step once the cache is steady, then replays it: the logits of every step equal
    # eager decoding's; attention's growing cache keeps it eager, its static cache (preallocated buffers) records
    torch.manual_seed(0)
    config = wm.presets.get(name, use_cache=True)
    model = wm.CheemsForCausalLM(config).eval().to("cuda", dtype)
    prompt = torch.randint(0, config.vocab_size, (2, 20), device="cuda")
    caches = [wm.models.CheemsCache(config, static_attention=False),
              wm.models.CheemsCache(config, static_attention=static)]
    with torch.no_grad():
        for cache in caches:
            model(input_ids=prompt, past_key_values=cache, use_cache=True)
    decoder = wm.models.GraphedDecoder(model, caches[1])
    tokens = torch.randint(0, config.vocab_size, (12, 2, 1), device="cuda")
    for token in tokens:
        with torch.no_grad():
            ref = model(input_ids=token, past_key_values=caches[0], use_cache=True, graphed_decoding=False).logits
        out = decoder.step(token)
        # the same kernels in the same order, except attention over a static cache's whole buffer
        tol = TOL[dtype] if static else TOL[dtype] / 10
        assert rel_err(out.float().cpu(), ref.float().cpu()) < tol, (decoder.recorded, decoder.failed)
    assert decoder.recorded == records and decoder.failed is None
    assert caches[1].get_seq_length() == caches[0].get_seq_length() == 32


@pytest.mark.parametrize("name", [n for n in wm.presets.names() if n.endswith("-tiny")])
def test_generate_replays_graphed_steps_with_the_tokens_of_eager_decoding(name):
    # generate's one-token steps go through the cache's GraphedDecoder (recorded once the cache is steady: the
    # 20-token prompt fills the DMA window of 8; attention layers get static buffers for the whole generation);
    # greedy with left padding, sampling and beam search give the tokens of eager decoding (float32)
    torch.manual_seed(0)
    model = wm.CheemsForCausalLM(wm.presets.get(name, graphed_decoding=True)).eval().to("cuda")
    ids = torch.randint(1, model.config.vocab_size, (3, 20), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    from wonderful_matrices.models.modeling import CACHE_NAME

    runs = [dict(do_sample=False), dict(do_sample=True, top_k=20), dict(num_beams=3, do_sample=False)]
    for kw in runs:
        kw.update(attention_mask=mask, max_new_tokens=12, pad_token_id=0)
        cache = wm.models.CheemsCache(model.config)
        with torch.no_grad():
            torch.manual_seed(1)
            graphed = model.generate(ids, **{CACHE_NAME: cache}, **kw)
            torch.manual_seed(1)
            eager = model.generate(ids, graphed_decoding=False, **kw)
        assert torch.equal(graphed, eager), kw
        decoder = cache.graphed_decoder
        assert decoder is not None and decoder.failed is None
        assert decoder.recorded and cache.static_attention, kw


def test_llama_generate_records_with_a_static_cache_and_gives_the_eager_tokens():
    # issue 18: llama-base "cannot be graphed (cache not steady)"; with graphed_decoding, generate's own cache
    # has static attention buffers sized for max_length, so the steps record and replay
    torch.manual_seed(0)
    model = wm.CheemsForCausalLM(wm.presets.get("llama-tiny", graphed_decoding=True)).eval().to("cuda")
    ids = torch.randint(1, model.config.vocab_size, (2, 30), device="cuda")
    mask = torch.ones_like(ids)
    mask[0, :9] = 0
    from wonderful_matrices.models.modeling import CACHE_NAME

    kw = dict(attention_mask=mask, max_new_tokens=40, pad_token_id=0, do_sample=False)
    cache = wm.models.CheemsCache(model.config)
    with torch.no_grad():
        graphed = model.generate(ids, **{CACHE_NAME: cache}, **kw)
        eager = model.generate(ids, graphed_decoding=False, **kw)
    assert torch.equal(graphed, eager)
    assert cache.static_attention and cache.attention_capacity == 256
    assert cache.graphed_decoder.recorded and cache.graphed_decoder.failed is None


@pytest.mark.parametrize("name", [n for n in wm.presets.names() if n.endswith("-tiny")])
@pytest.mark.parametrize("graphed", [False, True])
def test_fused_decoding_kernels_keep_the_greedy_tokens(name, graphed):
    # the fused decoding kernels (SSD step, DMA step, CDMoE routing; the last forced with cdmoe_backend="triton"
    # until "auto" takes it) give the greedy tokens of the torch paths (float32, left-padded batch)
    torch.manual_seed(0)
    config = wm.presets.get(name, graphed_decoding=graphed, cdmoe_backend="triton")
    fused = wm.CheemsForCausalLM(config).eval().to("cuda")
    plain = wm.CheemsForCausalLM(wm.presets.get(name, graphed_decoding=False, ssd_backend="torch",
                                                cdmoe_backend="torch", dma_decode_backend="torch")).eval().to("cuda")
    plain.load_state_dict(fused.state_dict())
    ids = torch.randint(1, fused.config.vocab_size, (3, 20), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    kw = dict(attention_mask=mask, max_new_tokens=16, pad_token_id=0, do_sample=False)
    with torch.no_grad():
        assert torch.equal(fused.generate(ids, **kw), plain.generate(ids, **kw))


@pytest.mark.parametrize("name", ["cheems-tiny", "jamba-tiny", "llama-tiny", "mamba2-tiny", "doge-tiny"])
def test_packed_model_cuda(name):
    """A packed row on the GPU (float32, every kernel the model uses there) gives each document its logits alone."""
    torch.manual_seed(0)
    model = wm.CheemsForCausalLM(wm.presets.get(name)).cuda().float().eval()
    lengths = [40, 1, 17, 70]
    gen = torch.Generator().manual_seed(1)
    docs = [torch.randint(0, model.config.vocab_size, (n,), generator=gen).cuda() for n in lengths]
    positions = torch.cat([torch.arange(n) for n in lengths]).cuda()
    with torch.no_grad():
        packed = model(input_ids=torch.cat(docs)[None], position_ids=positions[None]).logits[0]
        alone = torch.cat([model(input_ids=d[None]).logits[0] for d in docs])
    assert rel_err(packed.cpu(), alone.cpu()) < TOL[torch.float32]


@pytest.mark.parametrize("name", ["cheems-tiny", "llama-tiny", "jamba-tiny", "mamba2-tiny", "doge-tiny"])
def test_fused_training_step_bf16_cuda(name):
    """A model's bf16-autocast training step with the fused norms and loss is as close to the float32 step as the
    plain-PyTorch bf16 step is.

    Both bf16 steps round differently, so they are measured against the float32 plain step rather than against each
    other: their gradients differ by up to the sum of the two rounding errors (3.1% for jamba-tiny on an H100), which
    alone does not say that either is worse.
    """
    from wonderful_matrices.bench.lm_common import set_fused

    torch.manual_seed(0)
    model = wm.CheemsForCausalLM(wm.presets.get(name)).cuda().train()
    x = torch.randint(0, model.config.vocab_size, (4, 100), device="cuda")
    results = {}
    for fused, dtype in ((False, torch.float32), (False, torch.bfloat16), (True, torch.bfloat16)):
        set_fused(model, fused)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = model(x, labels=x)
        out.loss.backward()
        assert (out.logits is None) == fused
        results[fused, dtype] = (out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                     if p.grad is not None})
    ref_loss, ref = results[False, torch.float32]
    flat = lambda g: torch.cat([v.flatten().float() for v in g.values()])  # noqa: E731
    errors = {}
    for fused in (False, True):
        loss, grads = results[fused, torch.bfloat16]
        assert grads.keys() == ref.keys(), set(grads) ^ set(ref)
        errors[fused] = rel_err(loss, ref_loss), rel_err(flat(grads), flat(ref))
    worst = sorted(((rel_err(results[True, torch.bfloat16][1][k], ref[k]), k) for k in ref), reverse=True)[:4]
    (plain_loss_err, plain_grad_err), (fused_loss_err, fused_grad_err) = errors[False], errors[True]
    assert fused_loss_err < max(1.5 * plain_loss_err, 1e-3), errors
    assert fused_grad_err < max(1.5 * plain_grad_err, 1e-2), (errors, worst)  # worst: the fused step's parameters
