"""Bookkeeping of the `experts` benchmark (no timing here): head split, parameter counts, summary ratios, plot."""
import math

import pytest

from wonderful_matrices.bench import experts


@pytest.mark.parametrize("N", experts.EXPERT_COUNTS)
@pytest.mark.parametrize("ratio", experts.RATIOS)
def test_head_split_activates_ratio_sqrt_n(N, ratio):
    m = max(1, round(ratio * math.isqrt(N)))
    heads, top_k = experts.split_heads(m)
    assert heads * top_k == m and 1 <= heads <= 8 and top_k <= math.isqrt(N)


@pytest.mark.parametrize("impl", experts.IMPLEMENTATIONS)
def test_parameter_count_matches_the_built_layer(impl):
    for N, m in ((16, 2), (64, 6)):
        layer = experts.build(impl, 16, N, m)
        assert sum(p.numel() for p in layer.parameters()) == experts.parameter_count(impl, 16, N, m)


def test_summary_ratios_and_growth(tmp_path):
    rows = []
    for N, loop, grouped, cd in ((1024, 100.0, 8.0, 4.0), (4096, None, 9.0, 5.0)):
        for impl, ms in (("loop_moe", loop), ("grouped_moe", grouped), ("cdmoe", cd)):
            for mode in experts.MODES:
                rows.append({"N": N, "ratio": 0.5, "impl": impl, "mode": mode, "time_ms": ms})
    for N, ms in ((1024, 6.0), (4096, 9.0)):
        for mode in experts.MODES:
            rows.append({"N": N, "ratio": experts.TARGET_RATIO, "impl": "cdmoe", "mode": mode, "time_ms": ms})
    ratios, growth = experts.summarise(rows)
    assert all(r["ratio"] == 0.5 for r in ratios)  # the 8x16 target rows are not grid points
    first = next(r for r in ratios if r["N"] == 1024 and r["mode"] == "fwd")
    assert first["loop/cdmoe"] == 25.0 and first["grouped/cdmoe"] == 2.0
    assert next(r for r in ratios if r["N"] == 4096)["loop/cdmoe"] is None
    assert {g["growth"] for g in growth if g["ratio"] == 0.5} == {1.25}
    assert {g["growth"] for g in growth if g["ratio"] == experts.TARGET_RATIO} == {1.5}
    assert {g["largest_N"] for g in growth} == {4096}
    experts.plot(rows, tmp_path / "p.png", "cpu")
    assert (tmp_path / "p.png").stat().st_size > 0


def test_summary_covers_both_cdmoe_backends():
    rows = [{"N": N, "ratio": 0.5, "impl": impl, "mode": "fwd", "time_ms": ms}
            for N, impl, ms in ((1024, "loop_moe", 90.0), (1024, "cdmoe", 9.0), (1024, "cdmoe_triton", 3.0),
                                (4096, "cdmoe", 18.0), (4096, "cdmoe_triton", 4.5))]
    ratios, growth = experts.summarise(rows)
    by = {(r["N"], r["cdmoe"]): r for r in ratios}
    assert by[(1024, "cdmoe")]["loop/cdmoe"] == 10.0 and by[(1024, "cdmoe_triton")]["loop/cdmoe"] == 30.0
    assert {g["cdmoe"]: g["growth"] for g in growth} == {"cdmoe": 2.0, "cdmoe_triton": 1.5}


def test_skip_rules():
    import torch

    cpu = torch.device("cpu")
    assert "CUDA" in experts.skip_reason("cdmoe_triton", 1024, 0, 1, cpu)
    assert "loop MoE" in experts.skip_reason("loop_moe", 4096, 0, 1, cpu)
    assert "segment loop" in experts.skip_reason("grouped_moe", 4096, 0, 1, cpu)
    assert "GiB" in experts.skip_reason("cdmoe", 2 ** 20, 2 ** 40, 2 ** 30, cpu)
    assert experts.skip_reason("cdmoe", 2 ** 20, 2 ** 20, 2 ** 30, cpu) is None
