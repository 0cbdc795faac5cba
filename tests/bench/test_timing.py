"""bench.common.time_callable: how the benchmarks time a call."""


def test_benchmarks_time_ops_without_value_reads():
    """time_callable runs its calls inside trusted_values(): no argument check reads tensor values there (one host
    synchronisation each on a GPU), as in the model's training steps."""
    from wonderful_matrices.bench.common import time_callable
    from wonderful_matrices.ops.common import value_checks_enabled

    seen = []
    time_callable(lambda: seen.append(value_checks_enabled()), "cpu", warmup=1, reps=2)
    assert seen and not any(seen) and value_checks_enabled()


def test_gpu_sampler_summarises_readings(monkeypatch):
    """GpuSampler polls in a thread while its block runs and summarises the readings; off CUDA it reads nothing,
    and a reading that cannot be made (no nvidia-smi) ends the sampling with empty values."""
    import time

    import torch

    from wonderful_matrices.bench.common import GpuSampler

    with GpuSampler("cpu") as cpu:
        time.sleep(0.01)  # a block long enough for a sampling thread to read, had it started
    assert cpu._thread is None and cpu.samples == [] and set(cpu.summary().values()) == {None}

    readings = iter([(1980.0, 50.0, 400.0), (1755.0, 61.0, 500.0)])
    monkeypatch.setattr(GpuSampler, "sample", lambda self: next(readings, None))
    sampler = GpuSampler("cpu", interval_s=0.001)
    sampler.index = 0  # as on a GPU
    with sampler:
        deadline = time.monotonic() + 5
        while sampler._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.001)
    assert sampler.summary() == {"sm_clock_mhz": 1868, "sm_clock_min_mhz": 1755.0, "gpu_temp_max_c": 61.0,
                                 "power_mean_w": 450.0}
    assert GpuSampler(torch.device("cpu")).sample() is None
