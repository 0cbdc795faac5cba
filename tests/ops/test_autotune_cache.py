"""``ops.triton_utils.autotune``: the library's autotuned kernels keep their picks in Triton's cache (so every process
uses the configuration the first one measured), unless ``WM_AUTOTUNE_CACHE=0``."""
import importlib
import inspect

import pytest

from conftest import compiles_real_kernels

triton = pytest.importorskip("triton")

pytestmark = compiles_real_kernels  # the interpreter never caches picks (Triton's rule)

CACHES = "cache_results" in inspect.signature(triton.autotune).parameters


@triton.jit
def _copy_kernel(x_ptr, BLOCK: triton.language.constexpr):
    triton.language.store(x_ptr + triton.language.arange(0, BLOCK), 0.0)


@pytest.mark.skipif(not CACHES, reason="this triton's autotune cannot cache its results")
@pytest.mark.parametrize("setting, cached", [(None, True), ("1", True), ("0", False)])
def test_autotune_caches_unless_switched_off(monkeypatch, setting, cached):
    from wonderful_matrices.ops.triton_utils import autotune

    if setting is None:
        monkeypatch.delenv("WM_AUTOTUNE_CACHE", raising=False)
    else:
        monkeypatch.setenv("WM_AUTOTUNE_CACHE", setting)
    tuner = autotune([triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32})], key=[])(_copy_kernel)
    assert tuner.cache_results is cached


@pytest.mark.skipif(not CACHES, reason="this triton's autotune cannot cache its results")
@pytest.mark.parametrize("module, kernel", [("dma.windowed_kernels", "_fwd_kernel"),
                                            ("dma.windowed_kernels", "_dkv_kernel"),
                                            ("product_key.topk_kernels", "_topk_forward_bitonic_kernel"),
                                            ("expert_mixture.row_kernels", "_row_dots_kernel")])
def test_library_kernels_cache_their_picks(module, kernel):
    tuner = getattr(importlib.import_module(f"wonderful_matrices.ops.{module}"), kernel)
    assert tuner.cache_results
