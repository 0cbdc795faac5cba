import json

import torch

from wonderful_matrices.bench import dma as bench_dma


def test_dma_bench_runs_and_writes_results(tmp_path, monkeypatch):
    tiny = dict(lengths=[64], heads=2, head_dim=8, window=8, dtype=torch.float32, context=40, batches=[1],
                warmup=0, reps=1)
    monkeypatch.setattr(bench_dma, "QUICK", tiny)
    rows = bench_dma.run(tmp_path, quick=True, device="cpu")
    impls = {r["impl"] for r in rows}
    assert {"dma window 8 torch", "dma no window", "sdpa causal (default)", "selection only (block 64)",
            "DMA layer step, window 8", "DMA layer step, window None", "DMA attention step, window 8",
            "DMA attention step, window None", "SDPA attention step, full cache",
            "Attention layer step (Llama-style, cat cache)"} <= impls
    assert all(r.get("fwd_bwd_ms", 1) > 0 for r in rows)
    window_cache = next(r for r in rows if r["impl"] == "DMA layer step, window 8")["cache_mb"]
    full_cache = next(r for r in rows if r["impl"] == "DMA layer step, window None")["cache_mb"]
    assert window_cache < full_cache
    assert json.loads((tmp_path / "results.json").read_text())["rows"]
    assert (tmp_path / "results.md").exists()
