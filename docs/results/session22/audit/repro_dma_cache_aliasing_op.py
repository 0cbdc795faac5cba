"""Op-level: DecodeStep treats the storage behind a cache's tensors as its own buffer, so a cache built from
slices of larger tensors (cache_state / store keep views) makes the step (1) overwrite the caller's tensors and
(2) rank/evict among the caller's *other* rows, giving a wrong output."""
import torch
from wonderful_matrices.ops import dynamic_mask_attention
from wonderful_matrices.ops.dma import DecodeStep, cache_state
torch.manual_seed(0)
b, L, hq, hkv, d, w = 1, 20, 2, 2, 16, 8
k_all = torch.randn(b, L, hkv, d, dtype=torch.float64)
v_all = torch.randn(b, L, hkv, d, dtype=torch.float64)
bias_all = -torch.rand(b, L, hkv)                       # float32, as the cache stores it
pos_all = torch.arange(L)[None, :, None].expand(b, L, hkv).contiguous()
k_copy = k_all.clone()
q = torch.randn(b, 1, hq, d, dtype=torch.float64)
newk, newv = torch.randn(b, 1, hkv, d, dtype=torch.float64), torch.randn(b, 1, hkv, d, dtype=torch.float64)
newb, newp = -torch.rand(b, 1, hkv), torch.full((b, 1, hkv), 5)
# expected: the query sees the 5 cached keys + the new one (6 <= w: all of them)
K = torch.cat([k_all[:, :5], newk], 1); V = torch.cat([v_all[:, :5], newv], 1); B = torch.cat([bias_all[:, :5], newb], 1)
expected = dynamic_mask_attention(q, K, V, B, keep_window=w, causal=True, backend="naive")

fresh = cache_state(k_all[:, :5].clone(), v_all[:, :5].clone(), bias_all[:, :5].clone(), pos_all[:, :5].clone())
out_fresh = DecodeStep("torch").step(q, newk, newv, newb, newp, fresh, w)
views = cache_state(k_all[:, :5], v_all[:, :5], bias_all[:, :5], pos_all[:, :5])
out_views = DecodeStep("torch").step(q, newk, newv, newb, newp, views, w)
print("cache built from copies: max|out - expected| =", (out_fresh - expected).abs().max().item())
print("cache built from slices: max|out - expected| =", (out_views - expected).abs().max().item())
print("caller's k_all[:, 5:8] overwritten:", not torch.equal(k_all[:, 5:8], k_copy[:, 5:8]))
