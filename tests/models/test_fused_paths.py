"""Every preset trains the same with the fused paths as without: the fused RMSNorm (+ residual add), the gated
RMSNorm of the SSD/Mamba2 layers and the chunked LM-head loss give the loss and every parameter gradient of the
unfused model (float32, 1e-5).

In the normal run the norms take the torch path (the fused loss and the block's add-into-norm are what differ);
``test_interpreted_in_a_subprocess`` reruns the file under ``TRITON_INTERPRET=1``, where the norms run the Triton
kernels on the CPU.
"""
import copy

import pytest
import torch

import wonderful_matrices as wm
from conftest import INTERPRETED, interpreter_child_test, rel_err

TINY = [n for n in wm.presets.names() if n.endswith("-tiny")]

test_interpreted_in_a_subprocess = interpreter_child_test(__file__)


def loss_and_grads(model, x, labels, norm_backend, skip_logits, **kwargs):
    for module in model.modules():
        if isinstance(module, (wm.layers.RMSNorm, wm.layers.GatedRMSNorm)):
            module.backend = norm_backend
    model.zero_grad(set_to_none=True)
    out = model(x, labels=labels, skip_logits=skip_logits, **kwargs)
    out.loss.backward()
    assert (out.logits is None) == skip_logits
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _tiny_model(name):
    torch.manual_seed(0)
    model = wm.CheemsForCausalLM(wm.presets.get(name, residual_scale=name.startswith("doge"))).train()
    with torch.no_grad():  # non-trivial norm weights and residual scales
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or n.endswith("_residual"):
                p.add_(torch.randn_like(p) * 0.3)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, model.config.vocab_size, (2, 13), generator=g)
    labels = x.clone()
    labels[0, :4] = -100
    return model, x, labels


@pytest.mark.skipif(INTERPRETED, reason="float64: the torch paths only")
@pytest.mark.parametrize("name", TINY)
def test_fused_paths_compute_the_same_function(name):
    """In float64 the fused loss and the block's add-into-norm give every parameter's gradient of the unfused model
    to rounding (1e-12): the same function, whatever the conditioning of a gradient."""
    model, x, labels = _tiny_model(name)
    model = model.double()
    for kwargs in ({}, {"num_items_in_batch": 17}):
        ref_loss, ref = loss_and_grads(model, x, labels, "torch", False, **kwargs)
        loss, fused = loss_and_grads(model, x, labels, "torch", True, **kwargs)
        assert rel_err(loss, ref_loss) < 1e-12
        assert fused.keys() == ref.keys()
        for n in ref:
            assert rel_err(fused[n], ref[n]) < 1e-12, n


@pytest.mark.parametrize("name", TINY)
def test_fused_training_step_equals_unfused(name):
    """float32 (the Triton norm kernels in the interpreted run) against the unfused model in float64: the loss and
    the whole gradient within 1e-5. Per parameter, float32 rounding alone moves small sums with cancellation (DMA's
    ``dt_proj.bias``, ``A_log``) by 1e-5 to 1e-4 on either path; exactness per parameter is the float64 test's."""
    model, x, labels = _tiny_model(name)
    fused_backend = "triton" if INTERPRETED else "torch"
    oracle = copy.deepcopy(model).double()
    for kwargs in ({},) if INTERPRETED else ({}, {"num_items_in_batch": 17}):
        ref_loss, ref = loss_and_grads(oracle, x, labels, "torch", False, **kwargs)
        loss, fused = loss_and_grads(model, x, labels, fused_backend, True, **kwargs)
        assert rel_err(loss, ref_loss) < 1e-5
        assert fused.keys() == ref.keys()
        assert rel_err(torch.cat([v.flatten() for v in fused.values()]),
                       torch.cat([v.flatten() for v in ref.values()])) < 1e-5


def test_skip_logits_rule():
    model = wm.CheemsForCausalLM(wm.presets.get("llama-tiny"))
    x = torch.randint(0, model.config.vocab_size, (1, 6))
    assert model.train()(x, labels=x).logits is None
    assert model(x).logits.shape == (1, 6, model.config.vocab_size)  # no labels: logits
    assert model.eval()(x, labels=x).logits is not None               # evaluation keeps HF's contract
    model.config.fused_loss = False
    assert model.train()(x, labels=x).logits is not None
    with pytest.raises(ValueError, match="skip_logits"):
        model(x, skip_logits=True)
