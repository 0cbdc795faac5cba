"""The float64 loop oracle of the two slowest DMA CUDA cases (test_dma_triton_cuda [5-700-700] and [300-1000-1000]),
output and all gradients, timed on this repository's 2-core CPU (2 threads): is it cheaper on the host than on the GPU?
Run from the repository root: PYTHONPATH=src python docs/results/session10_cpu/dma_oracle_cpu_time.py"""
import time, torch, sys
sys.path.insert(0, "tests")
import wonderful_matrices as wm
from cuda_helpers import _grads, _leaf
torch.set_num_threads(2)
for window, lq, lk in ((5, 700, 700), (300, 1000, 1000)):
    b, hq, hkv, d = 1, 8, 2, 64
    base = [torch.randn(b, lq, hq, d), torch.randn(b, lk, hkv, d), torch.randn(b, lk, hkv, d), torch.randn(b, lk, hkv) * 3]
    base[3][0, :5] = float("-inf")
    fn = lambda q, k, v, bias: wm.ops.dynamic_mask_attention(q, k, v, bias, keep_window=window, backend="naive")
    t = time.perf_counter()
    _grads(fn, [_leaf(x, torch.float64, "cpu") for x in base])
    print(window, lq, f"{time.perf_counter() - t:.1f} s", flush=True)
