"""Helpers every benchmark uses: timing by one method, environment facts, result files.

Method (docs/design.md, "Benchmarks"): warm up, synchronise, time with device events on CUDA (``perf_counter`` after a
synchronise elsewhere), take the median of many runs; compare implementations side by side in one process.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from ..atomic import atomic_write_text
from ..ops.common import trusted_values


def synchronize(device: torch.device | str) -> None:
    """Wait for all queued work on ``device``."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def one_line(error: BaseException, limit: int = 300) -> str:
    """``"TypeName: first line of the message"``, at most ``limit`` characters."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:limit]


def time_callable(fn: Callable[[], object], device: torch.device | str, warmup: int = 3, reps: int = 10,
                  min_time_s: float = 0.0) -> float:
    """Median wall time of ``fn()`` in milliseconds.

    ``warmup`` untimed calls first; then at least ``reps`` timed calls (more until ``min_time_s`` elapsed).
    On CUDA each call is timed with a pair of events; elsewhere with ``perf_counter``. Every call runs inside
    ``trusted_values()``, as the model's layers and ``wm train`` call the ops: the argument checks that read tensor
    values (one host synchronisation each) are off, so an op is timed beside a library that checks nothing (e.g.
    ``mamba_ssm``) on equal terms; the shape and dtype checks still run.
    """
    device = torch.device(device)
    with trusted_values():
        return _median_ms(fn, device, warmup, reps, min_time_s)


def _median_ms(fn: Callable[[], object], device: torch.device, warmup: int, reps: int, min_time_s: float) -> float:
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples: list[float] = []
    start_all = time.perf_counter()
    while len(samples) < reps or (time.perf_counter() - start_all) < min_time_s:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        if len(samples) >= 10 * max(reps, 1):
            break
    return statistics.median(samples)


def device_kernel_times(fn: Callable[[], object], device: torch.device | str, reps: int = 5) -> dict[str, float] | None:
    """Milliseconds per ``fn()`` call of each kernel (and copy or set) it runs on the device, by name, largest
    first: torch.profiler's durations summed over ``reps`` calls after one untimed call, divided by ``reps``;
    None off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    with trusted_values():
        fn()
        events = device_events(fn, device, reps)
    totals: dict[str, float] = {}
    for event in events:
        totals[event.name] = totals.get(event.name, 0.0) + event.self_device_time_total / 1e3 / reps
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def device_events(fn: Callable[[], object], device: torch.device, reps: int = 1) -> list:
    """The torch.profiler events that ``reps`` calls of ``fn()`` run on the CUDA ``device`` (kernels, copies,
    sets), the queue drained before and after."""
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        synchronize(device)
    return [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def device_time_ms(fn: Callable[[], object], device: torch.device | str, reps: int = 5) -> float | None:
    """GPU busy time of one ``fn()`` call in milliseconds: the sum of :func:`device_kernel_times`; None off CUDA.

    Wall time (:func:`time_callable`) is what a caller waits, host work included; when the host is slower than the
    GPU (small shapes, many launches, a slow CPU) it measures the host. This is the GPU's own share: the cost two
    implementations compare on when the host keeps ahead of the GPU, as it does in a model's training step.
    """
    kernels = device_kernel_times(fn, device, reps)
    return None if kernels is None else sum(kernels.values())


def peak_memory_bytes(fn: Callable[[], object], device: torch.device | str) -> int | None:
    """Peak CUDA memory allocated while running ``fn()`` once (above what was allocated before); None off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


class GpuSampler:
    """The GPU's SM clock, temperature and power, read from ``nvidia-smi`` every ``interval_s`` seconds in a thread
    while the ``with`` block runs (e.g. around timed steps): the same code's speed can differ between processes
    (docs/results.md, session 18), and a lower clock is one explanation to rule in or out. Off CUDA, or without
    ``nvidia-smi``, it samples nothing.

    ``summary()`` -> ``{"sm_clock_mhz": mean, "sm_clock_min_mhz", "gpu_temp_max_c", "power_mean_w"}`` over the samples
    (None values when there were none).
    """

    QUERY = "clocks.sm,temperature.gpu,power.draw"

    def __init__(self, device: torch.device | str, interval_s: float = 0.5):
        device = torch.device(device)
        self.index = (device.index if device.index is not None else torch.cuda.current_device()) \
            if device.type == "cuda" else None
        self.interval_s = interval_s
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = None

    def sample(self) -> tuple[float, float, float] | None:
        """One reading ``(sm clock MHz, temperature C, power W)``, or None when it cannot be read."""
        if self.index is None:
            return None
        try:
            text = subprocess.run(["nvidia-smi", "-i", str(self.index), f"--query-gpu={self.QUERY}",
                                   "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5,
                                  check=True).stdout
            clock, temp, power = (float(v) for v in text.strip().splitlines()[0].split(","))
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None
        return clock, temp, power

    def _run(self) -> None:
        while not self._stop.is_set():
            reading = self.sample()
            if reading is None:
                return
            self.samples.append(reading)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "GpuSampler":
        if self.index is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict:
        if not self.samples:
            return {"sm_clock_mhz": None, "sm_clock_min_mhz": None, "gpu_temp_max_c": None, "power_mean_w": None}
        clocks, temps, powers = zip(*self.samples)
        return {"sm_clock_mhz": round(statistics.fmean(clocks)), "sm_clock_min_mhz": min(clocks),
                "gpu_temp_max_c": max(temps), "power_mean_w": round(statistics.fmean(powers), 1)}


def environment() -> dict:
    """Versions and device description recorded with every result."""
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    else:
        info["device"] = f"cpu ({platform.processor() or platform.machine()})"
    return info


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None,
                   formats: Mapping[str, Callable[[dict], str]] | None = None) -> str:
    """Rows of dicts -> a GitHub markdown table (floats with 4 significant digits; None as '—'). ``formats``
    maps a column to a function of the row giving its cell (for nested values such as a list of dicts)."""
    if not rows:
        return "(no rows)\n"
    columns = list(columns or rows[0].keys())

    def fmt(v):
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    formats = formats or {}
    lines += ["| " + " | ".join(formats[c](r) if c in formats else fmt(r.get(c)) for c in columns) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"


def write_results(out_dir: str | os.PathLike, name: str, rows: Sequence[dict], meta: dict,
                  columns: Sequence[str] | None = None, notes: str = "",
                  formats: Mapping[str, Callable[[dict], str]] | None = None) -> str:
    """Write ``results.json`` (rows + meta + environment) and ``results.md`` into ``out_dir``; return the table
    (``formats``: as in :func:`markdown_table`)."""
    out = Path(out_dir)
    table = markdown_table(rows, columns, formats)
    payload = {"experiment": name, "meta": meta, "environment": environment(), "rows": list(rows)}
    atomic_write_text(out / "results.json", json.dumps(payload, indent=2, default=str) + "\n")
    env = payload["environment"]
    header = f"# {name}\n\n{env['date']} · {env['device']} · torch {env['torch']} · triton {env['triton']}\n\n"
    # nested values (tables of derived numbers) stay in results.json; the markdown lists the scalar settings
    meta_lines = "".join(f"- {k}: {v}\n" for k, v in meta.items() if not isinstance(v, (list, dict)) or
                         all(not isinstance(x, (list, dict)) for x in (v.values() if isinstance(v, dict) else v)))
    atomic_write_text(out / "results.md", header + meta_lines + "\n" + table + ("\n" + notes + "\n" if notes else ""))
    return table
