import json

import torch

from wonderful_matrices.bench import dma as bench_dma


def test_dma_bench_runs_and_writes_results(tmp_path, monkeypatch):
    tiny = dict(lengths=[64], heads=2, head_dim=8, window=8, dtype=torch.float32, context=40, batches=[1],
                warmup=0, reps=1, packed_length=64, documents=3, torch_window_max_length=64)
    monkeypatch.setattr(bench_dma, "QUICK", tiny)
    rows = bench_dma.run(tmp_path, quick=True, device="cpu", kernels=True)
    assert not any(r["part"] == "kernels" for r in rows)  # kernel times: CUDA only
    impls = {r["impl"] for r in rows}
    assert {"dma window 8 torch", "dma no window", "sdpa causal (default)",
            "selection only, torch (select_blocks, block 64)",
            "DMA layer step, window 8", "DMA layer step, window None", "DMA attention step, window 8",
            "DMA attention step, window None", "SDPA attention step, full cache",
            "Attention layer step (Llama-style, cat cache)", "dma window 8, one row",
            "dma window 8, 3 documents packed",
            "dma no window, one row", "dma no window, 3 documents packed"} <= impls
    assert all(r.get("fwd_bwd_ms", 1) > 0 for r in rows)
    assert all("error" not in r for r in rows)
    fractions = {r["impl"]: r["kept_fraction"] for r in rows if r["part"] == "train" and "kept_fraction" in r}
    assert fractions["dma no window"] == 1.0
    assert fractions["dma window 8 torch"] == bench_dma.kept_fraction(64, 8) == (36 + 56 * 8) / (64 * 65 / 2)
    assert sum(r["part"] == "packed" and "packed / unpacked" in r for r in rows) == 2
    assert all(r["fwd_gpu_ms"] is None for r in rows if "fwd_bwd_ms" in r)  # GPU busy time: CUDA only
    train = [r for r in rows if r["part"] == "train" and r.get("fwd_bwd_ms")]
    sdpa = next(r for r in train if r["impl"].startswith("sdpa"))
    for row in train:  # the speed-ups over SDPA in wall time; none in GPU time off CUDA
        assert row["sdpa_time / time"] == sdpa["fwd_bwd_ms"] / row["fwd_bwd_ms"]
        assert row["sdpa / this, fwd"] == sdpa["fwd_ms"] / row["fwd_ms"]
        assert "sdpa / this, gpu fwd" not in row and "sdpa / this, gpu fwd_bwd" not in row
    window_cache = next(r for r in rows if r["impl"] == "DMA layer step, window 8")["cache_mb"]
    full_cache = next(r for r in rows if r["impl"] == "DMA layer step, window None")["cache_mb"]
    assert window_cache < full_cache
    assert json.loads((tmp_path / "results.json").read_text())["rows"]
    assert (tmp_path / "results.md").exists()


def test_document_ids_are_uneven_and_cover_the_row():
    ids = bench_dma.document_ids(1000, 7, "cpu")
    lengths = torch.bincount(ids[0])
    assert ids.shape == (1, 1000) and len(lengths) == 7 and lengths.sum() == 1000
    assert (ids[0, 1:] >= ids[0, :-1]).all() and lengths.min() < lengths.max() / 2


def test_kernel_rows_list_the_largest_kernels_and_sum_the_rest():
    times = {f"kernel_{i}": 10.0 - i for i in range(5)}  # largest first, as device_kernel_times returns them
    rows = bench_dma._kernel_rows(16, "impl", {"fwd": times, "fwd_bwd": times, "none": None}, top=3)
    assert [(r["pass"], r["kernel"], r["kernel_ms"]) for r in rows] == [
        (p, k, t) for p in ("fwd", "fwd_bwd")
        for k, t in (("kernel_0", 10.0), ("kernel_1", 9.0), ("kernel_2", 8.0), ("(2 other kernels)", 13.0))]
    assert all(r["T"] == 16 and r["impl"] == "impl" for r in rows)


def test_sdpa_ratios_where_both_rows_have_the_timing():
    sdpa = dict(fwd_ms=2.0, fwd_bwd_ms=8.0, fwd_gpu_ms=1.5, fwd_bwd_gpu_ms=6.0)
    row = dict(fwd_ms=4.0, fwd_bwd_ms=4.0, fwd_gpu_ms=0.5, fwd_bwd_gpu_ms=None)
    assert bench_dma.sdpa_ratios(sdpa, row) == {"sdpa_time / time": 2.0, "sdpa / this, fwd": 0.5,
                                                "sdpa / this, gpu fwd": 3.0}
    assert bench_dma.sdpa_ratios({}, row) == {}
