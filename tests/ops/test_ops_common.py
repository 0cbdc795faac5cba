"""ops/common.py: the helpers every op's dispatch shares."""
import pytest
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


def test_check_linear_names_the_argument_and_what_is_allowed():
    from wonderful_matrices.ops.common import check_linear

    check_linear(torch.randn(5, 3), torch.randn(5), 3, "w", "b", "x's last dim")
    check_linear(torch.randn(5, 3), None, 3, "w", "b", "x's last dim")
    with pytest.raises(ValueError, match=r"w.shape=\(5, 4\) is not allowed: \(o, 3\) matching x's last dim"):
        check_linear(torch.randn(5, 4), None, 3, "w", "b", "x's last dim")
    with pytest.raises(ValueError, match=r"w.shape='list'"):
        check_linear([1.0], None, 3, "w", "b", "x's last dim")
    with pytest.raises(ValueError, match=r"b.shape=\(4,\) is not allowed: None or \(5,\)"):
        check_linear(torch.randn(5, 3), torch.randn(4), 3, "w", "b", "x's last dim")


def test_backend_choice_compiles_without_warnings():
    """Every op asks :func:`triton_usable` while ``torch.compile`` traces it: that question must not make Dynamo warn
    (it warned about tracing through a ``functools`` cache at every compile of a model)."""
    import warnings

    from wonderful_matrices.ops.common import triton_usable

    def pick(x):
        return x + 1 if triton_usable(x.device) else x - 1

    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(pick, backend="eager", fullgraph=True)(torch.zeros(2))
    assert out.tolist() == pick(torch.zeros(2)).tolist()
    assert not [str(w.message) for w in caught if "Dynamo" in str(w.message)]
