"""GraphedDecoder: the body it records (a model step whose replaced cache tensors are folded back into the
fixed ones) gives the same logits as plain decoding, step after step; caches that keep growing are refused.
The recording and replay themselves need CUDA: tests/models/test_models_cuda.py."""
import pytest
import torch

from conftest import rel_err
from wonderful_matrices.models import CheemsCache, CheemsForCausalLM, GraphedDecoder, presets


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
