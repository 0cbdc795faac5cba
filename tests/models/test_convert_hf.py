"""HF checkpoints load into the matching Cheems config and give the same logits (float32, rel <= 1e-4)."""
import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import rel_err
from wonderful_matrices.models.convert import from_hf_llama


def random_norms(model):
    """Norm weights away from 1, so that a swapped or missing norm cannot go unnoticed."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return model


def hf_llama(tie=False, attention_bias=False):
    cfg = LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, head_dim=8,
                      rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                      tie_word_embeddings=tie, attention_bias=attention_bias)
    cfg._attn_implementation = "eager"
    return random_norms(LlamaForCausalLM(cfg)).eval()


@pytest.mark.parametrize("tie,bias", [(False, False), (True, False), (False, True)])
def test_llama_logits_match(tie, bias):
    hf = hf_llama(tie, bias)
    ours = from_hf_llama(hf)
    assert ours.config.layer_types == ["attn", "attn"] and ours.config.ffn_types == ["mlp", "mlp"]
    assert ours.config.tie_word_embeddings == tie
    x = torch.randint(0, 97, (2, 13))
    with torch.no_grad():
        assert rel_err(ours(x).logits, hf(x).logits) < 1e-4


def test_llama_left_padding_and_cache_match():
    hf = hf_llama()
    ours = from_hf_llama(hf)
    x = torch.randint(0, 97, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0
    with torch.no_grad():
        a = ours(x, attention_mask=mask).logits
        b = hf(x, attention_mask=mask).logits
        assert rel_err(a[0, 3:], b[0, 3:]) < 1e-4 and rel_err(a[1], b[1]) < 1e-4
        g1 = ours.generate(x, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        g2 = hf.generate(x, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(g1, g2)


def test_llama_unsupported_field_is_rejected():
    hf = hf_llama()
    hf.config.hidden_act = "gelu"
    with pytest.raises(ValueError, match="hidden_act"):
        from_hf_llama(hf)


def test_mamba2_logits_match():
    from transformers import Mamba2Config, Mamba2ForCausalLM

    from wonderful_matrices.models.convert import from_hf_mamba2

    cfg = Mamba2Config(vocab_size=97, hidden_size=32, num_hidden_layers=2, state_size=8, expand=2, head_dim=8,
                       num_heads=8, n_groups=2, conv_kernel=4, chunk_size=8, tie_word_embeddings=False)
    hf = random_norms(Mamba2ForCausalLM(cfg)).eval()
    ours = from_hf_mamba2(hf)
    assert ours.config.layer_types == ["mamba2"] * 2 and ours.config.ffn_types == ["none"] * 2
    x = torch.randint(0, 97, (2, 19))
    with torch.no_grad():
        assert rel_err(ours(x).logits, hf(x).logits) < 1e-4


def test_doge_dense_logits_match():
    from transformers import DogeConfig, DogeForCausalLM

    from wonderful_matrices.models.convert import from_hf_doge

    cfg = DogeConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, keep_window_size=5, attention_bias=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 500.0}, tie_word_embeddings=True)
    cfg._attn_implementation = "eager"
    hf = random_norms(DogeForCausalLM(cfg)).eval()
    # Residual scales and the mask parameters away from their initial values; dt_proj large enough that key
    # biases are well separated (near-ties would make the window's choice of keys ambiguous).
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if n.endswith("residual"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif n.endswith(".A"):
                p.copy_(0.5 + 0.5 * torch.rand_like(p))
            elif "dt_proj" in n:
                p.copy_(torch.randn_like(p))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # distinct mask values: no tie warning
        ours = from_hf_doge(hf)
    assert ours.config.layer_types == ["dma"] * 2 and ours.config.keep_window == 5
    x = torch.randint(0, 97, (2, 17))
    with torch.no_grad():
        assert rel_err(ours(x).logits, hf(x).logits) < 1e-4


def test_doge_with_every_mask_value_tied_warns():
    """HF initialises Doge's ``A`` to 0: every key's mask value ties, and the window's choice among tied keys is
    the later key here, whatever ``torch.topk`` returns in HF (the earlier on the CPU) — the conversion says so."""
    from transformers import DogeConfig, DogeForCausalLM

    from wonderful_matrices.models.convert import from_hf_doge

    cfg = DogeConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, keep_window_size=5, tie_word_embeddings=True)
    cfg._attn_implementation = "eager"
    hf = DogeForCausalLM(cfg).eval()
    with torch.no_grad():  # as transformers 5.25 initialises it (not relied on: other versions may differ)
        for n, p in hf.named_parameters():
            if n.endswith(".A"):
                p.zero_()
    with pytest.warns(UserWarning, match="A = 0"):
        ours = from_hf_doge(hf)
    x = torch.randint(0, 97, (1, 4))  # within the window: nothing to choose, the logits agree
    with torch.no_grad():
        assert rel_err(ours(x).logits, hf(x).logits) < 1e-4
