"""GraphedDecoder: the body it records (a model step whose replaced cache tensors are folded back into the
fixed ones) gives the same logits as plain decoding, step after step, also replayed (a stand-in for the graph)
across beam reorders; caches that keep growing are refused; generate's steps go through the cache's decoder.
The recording and replay themselves need CUDA: tests/models/test_models_cuda.py."""
import pytest
import torch

from conftest import rel_err
from wonderful_matrices.models import CheemsCache, CheemsForCausalLM, GraphedDecoder, presets
from wonderful_matrices.models.modeling import CACHE_NAME


def _model_and_prefill(name, prompt_len=20, batch=2):
    torch.manual_seed(0)
    config = presets.get(name, use_cache=True)
    model = CheemsForCausalLM(config).eval().double()
    prompt = torch.randint(0, config.vocab_size, (batch, prompt_len))
    caches = []
    for _ in range(2):
        cache = CheemsCache(config)
        with torch.no_grad():
            model(input_ids=prompt, past_key_values=cache, use_cache=True)
        caches.append(cache)
    return model, config, caches


@pytest.mark.parametrize("name", ["cheems-tiny", "doge-tiny", "mamba2-tiny"])
def test_the_recorded_body_decodes_like_the_model(name):
    # the prompt (20 tokens) is longer than the DMA window (8): every cached tensor keeps its shape per step
    model, config, (ref_cache, cache) = _model_and_prefill(name)
    decoder = GraphedDecoder(model, cache, use_graph=False)
    static = decoder._snapshot()
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        token = torch.randint(0, config.vocab_size, (2, 1), generator=gen)
        with torch.no_grad():
            ref = model(input_ids=token, past_key_values=ref_cache, use_cache=True).logits
            out = decoder._eager(token)
            decoder._fold(static)
        assert rel_err(out, ref) < 1e-12
        # the cache points at the same tensors as before the step, holding the new values
        assert all(decoder._snapshot()[key] is t for key, t in static.items())
    for state, ref_state in zip(cache.states, ref_cache.states):
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, ref_state[key]), key


def test_eager_steps_and_a_cache_that_keeps_growing():
    model, config, (ref_cache, cache) = _model_and_prefill("llama-tiny")
    decoder = GraphedDecoder(model, cache, use_graph=False)
    token = torch.tensor([[3], [4]])
    with torch.no_grad():
        ref = model(input_ids=token, past_key_values=ref_cache, use_cache=True).logits
    assert rel_err(decoder.step(token), ref) < 1e-12 and not decoder.recorded
    static = decoder._snapshot()
    with torch.no_grad():
        decoder._eager(token)
    with pytest.raises(RuntimeError, match="not steady"):  # attention keys grow by one per step
        decoder._fold(static)
    with pytest.raises(ValueError, match="input_ids.shape"):
        decoder.step(torch.tensor([[3, 4]]))


class _BodyAsGraph:
    """Stands in for a recorded CUDA graph on the CPU: ``replay()`` runs the recorded body (the model step on the
    fixed input buffer, then the fold into the fixed cache tensors) and writes the fixed output buffer, without
    the Python bookkeeping a replay skips (the seen-token count)."""

    def __init__(self, decoder):
        self.decoder = decoder

    def replay(self):
        d = self.decoder
        seen = d.cache.get_seq_length()
        with torch.no_grad():
            d._logits.copy_(d._eager(d._ids))
        d._fold(d._static)
        d.cache.set_seen_tokens(seen)


def _record_on_cpu(decoder, token):
    decoder._static = decoder._snapshot()
    decoder._ids = token.clone()
    decoder._logits = torch.empty(token.shape[0], 1, decoder.model.config.vocab_size, dtype=torch.float64)
    decoder.graph = _BodyAsGraph(decoder)


def test_replays_fold_rows_reordered_between_steps_and_rerecord_after_a_shape_change():
    model, config, (ref_cache, cache) = _model_and_prefill("cheems-tiny", batch=3)
    decoder = GraphedDecoder(model, cache, use_graph=False)
    _record_on_cpu(decoder, torch.zeros(3, 1, dtype=torch.long))
    fixed = dict(decoder._static)
    gen = torch.Generator().manual_seed(2)
    for step in range(5):
        token = torch.randint(0, config.vocab_size, (3, 1), generator=gen)
        if step in (2, 3):  # beam search: the rows are reordered (new tensors) between two steps
            order = torch.tensor([2, 0, 0])
            ref_cache.reorder_cache(order)
            cache.reorder_cache(order)
        with torch.no_grad():
            ref = model(input_ids=token, past_key_values=ref_cache, use_cache=True, graphed_decoding=False).logits
        out = decoder.step(token)
        assert decoder.recorded and rel_err(out, ref) < 1e-12, step
        assert all(decoder._snapshot()[key] is t for key, t in fixed.items())
    assert cache.get_seq_length() == ref_cache.get_seq_length() == 25
    cache.batch_select_indices(torch.tensor([0, 2]))  # rows dropped: the recorded graph no longer fits
    ref_cache.batch_select_indices(torch.tensor([0, 2]))
    token = torch.tensor([[5], [6]])
    with torch.no_grad():
        ref = model(input_ids=token, past_key_values=ref_cache, use_cache=True, graphed_decoding=False).logits
    assert rel_err(decoder.step(token), ref) < 1e-12 and not decoder.recorded


@pytest.mark.parametrize("name", ["cheems-tiny", "llama-tiny"])
def test_generate_steps_run_through_the_cache_decoder(name):
    torch.manual_seed(0)
    model = CheemsForCausalLM(presets.get(name, graphed_decoding=True)).eval()
    ids = torch.randint(1, model.config.vocab_size, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # left padding: in the cache, never among the new tokens
    cache = CheemsCache(model.config)
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        graphed = model.generate(ids, **{CACHE_NAME: cache}, **kw)
        eager = model.generate(ids, graphed_decoding=False, **kw)
    assert torch.equal(graphed, eager)
    assert isinstance(cache.graphed_decoder, GraphedDecoder) and not cache.graphed_decoder.recorded  # CPU: eager
    cache.reset()
    assert cache.graphed_decoder is None


def test_calls_the_decoder_cannot_run_stay_eager():
    torch.manual_seed(0)
    model = CheemsForCausalLM(presets.get("cheems-tiny", graphed_decoding=True)).eval()
    cache = CheemsCache(model.config)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3], [4, 5, 6]]), past_key_values=cache, use_cache=True)
        model(torch.tensor([[7], [8]]), attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
              past_key_values=cache, use_cache=True)  # padding among the new tokens
        model(torch.tensor([[7], [8]]), past_key_values=cache, use_cache=True, output_hidden_states=True)
        model(torch.tensor([[7, 8], [8, 9]]), past_key_values=cache, use_cache=True)  # two tokens per row
    assert cache.graphed_decoder is None
    with torch.no_grad():
        model(torch.tensor([[7], [8]]), past_key_values=cache, use_cache=True)
    assert cache.graphed_decoder is not None


def test_bad_tokens_in_a_decoding_step_raise_value_errors():
    torch.manual_seed(0)
    model = CheemsForCausalLM(presets.get("mamba2-tiny")).eval()
    cache = CheemsCache(model.config)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), past_key_values=cache, use_cache=True)
        with pytest.raises(ValueError, match="input_ids"):
            model(torch.tensor([[model.config.vocab_size]]), past_key_values=cache, use_cache=True)


def test_replays_of_a_static_attention_cache_and_a_new_recording_after_its_buffers_grow():
    # llama-tiny with preallocated attention buffers: the recorded body (stand-in graph) decodes like the growing
    # cache; the step that needs a 257th slot drops the graph (it would write past the buffers), runs eagerly and
    # grows them, and the step after it may record again
    torch.manual_seed(0)
    config = presets.get("llama-tiny", use_cache=True)
    model = CheemsForCausalLM(config).eval().double()
    prompt = torch.randint(0, config.vocab_size, (2, 250))
    ref_cache, cache = CheemsCache(config, static_attention=False), CheemsCache(config, static_attention=True)
    with torch.no_grad():
        for c in (ref_cache, cache):
            model(input_ids=prompt, past_key_values=c, use_cache=True)
    decoder = GraphedDecoder(model, cache, use_graph=False)
    _record_on_cpu(decoder, torch.zeros(2, 1, dtype=torch.long))
    gen = torch.Generator().manual_seed(3)
    recorded = []
    for _ in range(8):
        token = torch.randint(0, config.vocab_size, (2, 1), generator=gen)
        with torch.no_grad():
            ref = model(input_ids=token, past_key_values=ref_cache, use_cache=True).logits
        assert rel_err(decoder.step(token), ref) < 1e-12
        recorded.append(decoder.recorded)
    assert recorded == [True] * 6 + [False] * 2  # six replays fill slots 250..255
    assert cache.attention_capacity == 512 and cache.layer_state(0)["key"].shape[1] == 512
    assert cache.get_seq_length() == ref_cache.get_seq_length() == 258


@pytest.mark.parametrize("name", ["cheems-tiny", "llama-tiny"])
def test_graphed_steps_follow_the_callers_positions(name):
    """A prompt at the caller's positions (generate(position_ids=...), e.g. a document continued at an offset):
    the decoding steps continue those positions on the graphed path as on the eager one (it used the cache's count
    of tokens instead), and equal full forwards on the growing sequence."""
    torch.manual_seed(0)
    ids = torch.randint(1, 512, (1, 8))
    positions = torch.arange(100, 108)[None]
    outs = {}
    for graphed in (False, True):
        torch.manual_seed(0)
        model = CheemsForCausalLM(presets.get(name, initializer_range=0.3, graphed_decoding=graphed)).double().eval()
        with torch.no_grad():
            outs[graphed] = model.generate(ids, position_ids=positions, max_new_tokens=5, do_sample=False,
                                           pad_token_id=0)
    assert torch.equal(outs[True], outs[False])
    seq = outs[False]
    with torch.no_grad():
        for t in range(8, seq.shape[1]):
            logits = model(seq[:, :t], position_ids=torch.arange(100, 100 + t)[None], use_cache=False).logits
            assert logits[0, -1].argmax() == seq[0, t]
