"""Bookkeeping of the cdmoe_target benchmark (no timing): the target checks computed from rows."""
import pytest

from wonderful_matrices.bench import cdmoe_target


def test_summary_checks_targets():
    rows = [dict(N=N, what="cdmoe 8x16", backend="triton", part="layer", mode="fwd+bwd", time_ms=ms)
            for N, ms in ((1024, 4.0), (2 ** 20, 7.0))]
    rows += [dict(N=1024, what="cdmoe 8x1", backend="triton", part="layer", mode="fwd", time_ms=2.0),
             dict(N=1024, what="loop_moe top-8", backend="-", part="layer", mode="fwd", time_ms=30.0),
             dict(N=1024, what="grouped_moe top-8", backend="-", part="layer", mode="fwd", time_ms=1.0)]
    summary = {r["check"]: (r["value"], r["met"]) for r in cdmoe_target.summarise(rows, (1024, 2 ** 20))}
    assert summary[f"fwd+bwd ms at N={2 ** 20} (target <= 8.0)"] == (7.0, True)
    assert summary[f"growth N=1024 -> {2 ** 20} (target <= 1.5)"] == (1.75, False)
    assert summary["loop_moe/cdmoe fwd, N=1024, 8 active (target >= 10)"] == (15.0, True)
    assert summary["grouped_moe/cdmoe fwd, N=1024, 8 active"] == (0.5, None)
    unjudged = cdmoe_target.summarise(rows, (1024, 2 ** 20), judged=False)
    assert unjudged[0]["met"] is None and unjudged[1]["met"] is None and unjudged[0]["value"] == 7.0


def test_unknown_backend_is_refused_before_timing(tmp_path):
    with pytest.raises(ValueError, match="backends"):
        cdmoe_target.run(tmp_path, quick=True, device="cpu", backends=["dense", "gemm"])
