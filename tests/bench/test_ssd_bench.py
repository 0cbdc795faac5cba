"""The SSD benchmark's code paths run on tiny shapes (no timing is asserted)."""
import torch

from wonderful_matrices.bench import ssd as bench


def test_cpu_rows_and_files(tmp_path, monkeypatch):
    rows = bench.cpu_rows(torch.device("cpu"), lengths=(8, 33), reps=1)
    assert [r["implementation"] for r in rows] == ["naive (per-step recurrence)", "torch (chunked)"] * 2
    assert all(r["rel_err"] < 1e-5 for r in rows if "rel_err" in r)
    monkeypatch.setattr(bench, "cpu_rows", lambda device, lengths, reps: rows)
    bench.run(tmp_path, quick=True, device="cpu")
    for name in ("results.json", "results.md", "ssd.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_paper_rows_code_path_on_a_tiny_shape(tmp_path):
    shape = dict(batch=1, length=40, heads=2, head_dim=4, state=8, groups=1, chunk=16)
    rows = bench.paper_rows(torch.device("cpu"), shape=shape, dtype=torch.float32, try_compile=False)
    measured = [r for r in rows if r["source"] == "measured"]
    assert len(measured) == 1 and measured[0]["fwd_ms"] > 0 and measured[0]["fwd_bwd_ms"] > 0
    assert {r["implementation"] for r in rows if r["source"] == "reference (docs/design.md)"} == {
        "mamba_ssm Triton kernels", "pure-PyTorch minimal SSD (fp32)"}
    bench._plot(rows, tmp_path)
    assert (tmp_path / "ssd.png").stat().st_size > 0


def test_packed_rows_code_path_on_a_tiny_shape():
    shape = dict(batch=2, length=50, heads=2, head_dim=4, state=8, groups=1, chunk=16)
    rows = bench.packed_rows(torch.device("cpu"), shape, torch.float32, "torch", max_document=9, reps=1)
    assert [r["implementation"] for r in rows] == ["torch, unpacked", "torch, packed (seq_idx)"]
    assert rows[1]["documents"] > 2 * 50 // 9 and rows[1]["rel_err"] < 1e-6
    assert "fwd_overhead_pct" in rows[1] and "fwd_bwd_overhead_pct" in rows[1]
    assert rows[1]["fwd_gpu_ms"] is None and "fwd_gpu_overhead_pct" not in rows[1]  # GPU busy time: CUDA only
    ids = bench.document_ids(2, 50, 9, torch.device("cpu"))
    assert ids.shape == (2, 50) and bool((ids[:, 1:] >= ids[:, :-1]).all())
