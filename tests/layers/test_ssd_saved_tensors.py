"""What an SSD layer keeps for its backward under ``torch.compile`` (Triton kernels, bf16 autocast), where
AOTAutograd's partitioner decides it across the layer's autograd functions. Run under the Triton interpreter in a
child process (the kernels' values do not matter here, only the graph)."""
import operator

import pytest
import torch

from conftest import interpreted_only, interpreter_child_test, kept_for_backward

pytest.importorskip("triton")

test_interpreted_in_a_subprocess = interpreter_child_test(__file__)


def _source(node):
    """The node a saved tensor is a view of (through views, reshapes and getitems of views)."""
    while node.op == "call_function" and "view" in str(node.target) or "reshape" in str(node.target):
        node = node.args[0]
    return node


@interpreted_only
def test_ssd_layer_keeps_neither_silu_output_nor_norm_output():
    """The layer keeps SiLU's input (SSD recomputes the activation inside its operators) and the gated norm's inputs
    (its backward kernel writes the norm's output again for ``out_proj``'s weight gradient), not their outputs: two
    ``(tokens, h·p)`` tensors that a traced SiLU or a plain ``out_proj`` after the norm would keep."""
    from wonderful_matrices.layers.ssd import SSDMixer

    mixer = SSDMixer(hidden_size=64, num_heads=4, head_dim=32, state_size=32, chunk_size=16, backend="triton")
    mixer.norm.backend = "triton"
    hidden = torch.randn(2, 64, 64).bfloat16().requires_grad_()
    kept = [_source(node) for node in kept_for_backward(lambda h, pos: mixer(h, pos).float().sum(), hidden,
                                                        torch.arange(64).expand(2, 64), autocast_dtype=torch.bfloat16)]
    assert kept
    targets = {str(node.target) for node in kept}
    assert not any("silu" in t for t in targets), targets
    norm_outputs = [node for node in kept if node.target is operator.getitem
                    and "gated_rms_norm_forward" in str(node.args[0].target) and node.args[1] == 0]
    assert not norm_outputs, norm_outputs
