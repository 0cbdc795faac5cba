"""The decoding cache of each -base preset at 1M tokens of context (bf16 keys and values), from
``analytic_cache_bytes`` after session 22's correction (equal to the measured cache of every tiny preset: the test
``tests/bench/test_experiment_benches.py::test_lm_analytic_cache_matches_measured``).

    PYTHONPATH=src python docs/results/session22/audit/cache_at_1m.py
"""
from wonderful_matrices.bench.decode_common import analytic_cache_bytes
from wonderful_matrices.models import presets

sizes = {name: analytic_cache_bytes(presets.get(name), 2**20, 2)
         for name in ("cheems-base", "llama-base", "doge-base", "mamba2-base", "jamba-base")}
for name, size in sizes.items():
    print(f"{name}: {size / 2**20:.2f} MiB, 1/{sizes['llama-base'] / size:.0f} of llama-base's")
