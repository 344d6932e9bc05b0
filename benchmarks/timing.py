"""Shared timing for the benchmarks: warm-up, median of many runs, inputs rotated so that a
GPU run does not sit in L2, and an environment header printed first."""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from typing import Callable, Sequence

import torch


def environment(device: str) -> dict:
    env = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "commit": _git_commit(),
        "cpu": _cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def _git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def bench(fn: Callable, args_list: Sequence[tuple], device: str, min_reps: int = 5,
          max_reps: int = 100, budget_s: float = 1.0, warmup: int = 2) -> float:
    """Median seconds of fn(*args) over rotating argument sets, after warm-up.

    Runs at least `min_reps` times and at most `max_reps`, stopping once `budget_s` is spent.
    On CUDA each run is timed with CUDA events (kernel time, no host overhead in between).
    """
    n = len(args_list)
    for i in range(warmup):
        fn(*args_list[i % n])
    times = []
    spent = 0.0
    if device == "cuda":
        torch.cuda.synchronize()
        for i in range(max_reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args_list[i % n])
            end.record()
            end.synchronize()
            t = start.elapsed_time(end) / 1e3
            times.append(t)
            spent += t
            if i + 1 >= min_reps and spent > budget_s:
                break
    else:
        for i in range(max_reps):
            t0 = time.perf_counter()
            fn(*args_list[i % n])
            t = time.perf_counter() - t0
            times.append(t)
            spent += t
            if i + 1 >= min_reps and spent > budget_s:
                break
    return statistics.median(times)


def rotation(make: Callable[[int], tuple], bytes_per_set: int, device: str) -> list:
    """Enough argument sets that their total exceeds the GPU's L2 (one set on the CPU)."""
    if device != "cuda":
        return [make(0)]
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    count = max(1, min(16, (2 * l2) // max(1, bytes_per_set) + 1))
    return [make(i) for i in range(count)]
