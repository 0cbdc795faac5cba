"""Chunked prefill (``prefill_chunk_tokens``): a long prompt fed chunk by chunk through the cache gives the logits,
the cache and the greedy continuation of one call, for every tiny preset, with left-padded rows."""
import pytest
import torch

import wonderful_matrices as wm
from conftest import rel_err
from wonderful_matrices.models import CheemsCache

TINY = [n for n in wm.presets.names() if n.endswith("-tiny")]


def make(name, **overrides):
    torch.manual_seed(0)
    return wm.CheemsForCausalLM(wm.presets.get(name, **overrides)).eval()


def left_padded(lengths, vocab, seed=1):
    """(ids, mask), each (len(lengths), max(lengths)): random rows of the given lengths, padded on the left."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, width - n:] = torch.randint(1, vocab, (n,), generator=g)
        mask[i, width - n:] = 1
    return ids, mask


def prefill(model, ids, mask, chunk):
    cache = CheemsCache(model.config)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, past_key_values=cache, use_cache=True,
                       prefill_chunk_tokens=chunk).logits
    return logits, cache


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("chunk", [5, 16])
def test_chunked_prefill_equals_one_call(name, chunk):
    # 37 tokens: chunks of 5 (the second row is pure padding in its first chunks) and 16 (SSD/Mamba2 chunk size,
    # beyond the DMA window of 8); then decoding steps continue both caches alike
    model = make(name)
    ids, mask = left_padded([37, 4, 23], model.config.vocab_size)
    one, one_cache = prefill(model, ids, mask, None)
    seen = []
    hook = model.model.layers[0].register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    chunked, cache = prefill(model, ids, mask, chunk)
    hook.remove()
    assert seen == [min(chunk, 37 - start) for start in range(0, 37, chunk)]
    real = mask.bool()
    assert not torch.isnan(chunked[real]).any()
    assert rel_err(chunked[real], one[real]) < 1e-5
    assert cache.get_seq_length() == one_cache.get_seq_length() == 37
    assert torch.equal(cache.real_tokens, one_cache.real_tokens)
    for state, ref in zip(cache.states, one_cache.states):
        assert state.keys() == ref.keys()
        for key, value in ref.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                assert value.shape == state[key].shape, key
                finite = value.isfinite()  # DMA biases are -inf at padded keys
                assert torch.equal(state[key].isfinite(), finite) and torch.equal(state[key][~finite], value[~finite])
                assert rel_err(state[key][finite], value[finite]) < 1e-5, key
            elif isinstance(value, torch.Tensor):
                assert torch.equal(state[key], value), key
    step_mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
    token = torch.tensor([[3], [4], [5]])
    with torch.no_grad():
        a = model(token, attention_mask=step_mask, past_key_values=cache, use_cache=True).logits
        b = model(token, attention_mask=step_mask, past_key_values=one_cache, use_cache=True).logits
    assert rel_err(a, b) < 1e-5


@pytest.mark.parametrize("name", TINY)
def test_generate_with_chunked_prefill_gives_the_same_tokens(name):
    model = make(name)
    ids, mask = left_padded([29, 6], model.config.vocab_size, seed=2)
    kw = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        one = model.generate(ids, prefill_chunk_tokens=None, **kw)
        chunked = model.generate(ids, prefill_chunk_tokens=6, **kw)
    assert torch.equal(chunked, one)
    from_config = make(name, prefill_chunk_tokens=6)
    with torch.no_grad():
        assert torch.equal(from_config.generate(ids, **kw), one)
        # transformers' own chunked prefill (a generation option, chunks cut by generate) works with the cache too
        assert torch.equal(model.generate(ids, prefill_chunk_size=7, **kw), one)


def test_chunking_is_skipped_where_it_cannot_apply():
    model = make("cheems-tiny")
    ids, mask = left_padded([21, 21], model.config.vocab_size)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        # no cache: one call, whatever the chunk size
        assert torch.equal(model(ids, use_cache=False, prefill_chunk_tokens=4).logits, full)
        # output_hidden_states / output_attentions run one call (one entry per layer, all positions)
        cache = CheemsCache(model.config)
        out = model(ids, past_key_values=cache, use_cache=True, prefill_chunk_tokens=4, output_hidden_states=True,
                    output_attentions=True)
        assert len(out.hidden_states) == model.config.num_hidden_layers + 1
        assert all(h.shape[1] == 21 for h in out.hidden_states)
        assert rel_err(out.logits, full) < 1e-5


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_prefill_chunk_tokens_names_the_argument(bad):
    model = make("llama-tiny")
    with pytest.raises(ValueError, match="prefill_chunk_tokens"):
        model(torch.tensor([[1, 2, 3]]), prefill_chunk_tokens=bad)
    with pytest.raises(ValueError, match="prefill_chunk_tokens"):
        wm.presets.get("llama-tiny", prefill_chunk_tokens=bad)


@pytest.mark.parametrize("name", ["cheems-tiny", "jamba-tiny"])
def test_a_training_call_is_one_call_whatever_the_chunk_size(name):
    """A training forward with a cache (``use_cache`` defaults to the config's True, as under the HF Trainer) runs
    as one call: chunks would each overwrite the FFN layers' balance loss, leaving the last chunk's alone."""
    model = make(name).train()
    ids, _ = left_padded([20], model.config.vocab_size)
    torch.manual_seed(0)
    whole = model(ids, use_cache=False).aux_loss
    torch.manual_seed(0)
    cached = model(ids, use_cache=True, prefill_chunk_tokens=8).aux_loss
    assert whole is not None and rel_err(cached, whole) < 1e-6


@pytest.mark.parametrize("name", ["cheems-tiny", "mamba2-tiny"])
def test_transformers_prefill_chunks_of_one_token_keep_the_padding(name):
    """transformers' own chunked prefill (``generate(prefill_chunk_size=1)``) feeds the prompt one token per call
    after the first: those calls are prompt, not generated steps (their mask is read): each left-padded row
    continues as it does alone."""
    model = make(name, initializer_range=0.3).double()
    ids, mask = left_padded([3, 7], model.config.vocab_size)
    greedy = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, prefill_chunk_size=1, **greedy)
        for row, n in enumerate([3, 7]):
            alone = model.generate(ids[row:row + 1, 7 - n:], **greedy)
            assert torch.equal(out.sequences[row, 7:], alone.sequences[0, n:]), row
            assert rel_err(torch.stack(out.scores)[:, row], torch.stack(alone.scores)[:, 0]) < 1e-6, row
