"""bench.common.time_callable: how the benchmarks time a call."""


def test_benchmarks_time_ops_without_value_reads():
    """time_callable runs its calls inside trusted_values(): no argument check reads tensor values there (one host
    synchronisation each on a GPU), as in the model's training steps."""
    from wonderful_matrices.bench.common import time_callable
    from wonderful_matrices.ops.common import value_checks_enabled

    seen = []
    time_callable(lambda: seen.append(value_checks_enabled()), "cpu", warmup=1, reps=2)
    assert seen and not any(seen) and value_checks_enabled()
