"""ops/common.py: the helpers every op's dispatch shares."""
import torch


def test_autocast_dtype_and_needs_backward():
    """The two questions the fused paths ask before taking an autograd function: what autocast computes in here,
    and whether a backward will run."""
    from wonderful_matrices.ops.common import autocast_dtype, needs_backward

    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) is None and autocast_dtype(torch.device("meta")) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_dtype(cpu) == torch.bfloat16
    a, b = torch.randn(2), torch.randn(2, requires_grad=True)
    assert not needs_backward(a, None) and needs_backward(a, None, b)
    with torch.no_grad():
        assert not needs_backward(b)
