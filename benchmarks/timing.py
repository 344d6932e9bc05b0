"""Shared timing for the benchmarks: warm-up, median of many runs, inputs rotated so that a
GPU run does not sit in L2, and an environment header printed first.

Two times per measurement, reported apart (as torchao's float8 benchmarks do):
  end-to-end  the median time of one call, host gaps between its launches included (on CUDA,
              CUDA events around each call; on the CPU, the wall clock);
  kernel      on CUDA only: the GPU time of the kernels (and memsets/copies) one call launches,
              summed, from torch.profiler, mean over a few calls. An op of several launches at
              decode sizes shows its launch gaps as end-to-end minus kernel.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import statistics
import subprocess
import time
from typing import Callable, Optional, Sequence

import torch


# An AVX2-only x86 CPU (no AVX-512, no VNNI), emulated on a newer one: every library's CPU
# kernels capped at AVX2. int8kern's hand-written kernels (INT8KERN_CPU_ISA), MKL (float32 mm),
# oneDNN (torch's int8 and bf16 GEMMs, _int_mm), ATen's vectorized kernels and inductor's
# generated code (ATEN_CPU_CAPABILITY). Each library reads its variable when it first runs:
# the emulating process must start with them (benchmarks/avx2_gemm.py, bench_generate.py
# --emulate-avx2 start one). Zen 4 runs 256-bit code at full rate: a proxy, not the machine.
EMULATE_AVX2_ENV = {"INT8KERN_CPU_ISA": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                    "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def emulating_avx2() -> bool:
    """True in a process started with EMULATE_AVX2_ENV."""
    return all(os.environ.get(k) == v for k, v in EMULATE_AVX2_ENV.items())


def environment(device: str) -> dict:
    env = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "commit": _git_commit(),
        "cpu": _cpu_name(),
        "isa": cpu_isa()["isa"],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def cpu_isa() -> dict:
    """The CPU's name and the instruction sets that decide its int8 and bf16 speed, from
    /proc/cpuinfo: AMX (amx_tile, amx_int8, amx_bf16), AVX-512 VNNI and BF16, AVX-VNNI, AVX2."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name == "unknown CPU":
                    name = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
    have = {f: f in flags for f in wanted}
    if have["amx_int8"]:
        isa = "AMX (int8" + (", bf16" if have["amx_bf16"] else "") + ") + AVX-512 VNNI"
    elif have["avx512_vnni"]:
        isa = "AVX-512 VNNI" + (" + BF16" if have["avx512_bf16"] else "") + ", no AMX"
    elif have["avx512f"]:
        isa = "AVX-512 (no VNNI), no AMX"
    elif have["avx2"]:
        isa = "AVX2" + (" + AVX-VNNI" if have["avx_vnni"] else "") + ", no AVX-512"
    else:
        isa = "no AVX2"
    return {"cpu": name, "isa": isa, "flags": have}


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


@dataclasses.dataclass
class Timing:
    e2e_s: float                     # end-to-end seconds per call (median)
    kernel_s: Optional[float] = None  # summed GPU kernel seconds per call; None off CUDA


def measure(fn: Callable, args_list: Sequence[tuple], device: str, kernel_calls: int = 10, **bench_kw) -> Timing:
    """bench()'s end-to-end median, and on CUDA the profiler's kernel time beside it."""
    e2e = bench(fn, args_list, device, **bench_kw)
    kernel = kernel_time(fn, args_list, kernel_calls) if device == "cuda" else None
    return Timing(e2e, kernel)


def kernel_time(fn: Callable, args_list: Sequence[tuple], calls: int = 10) -> Optional[float]:
    """Seconds of GPU work per call of fn: the durations of every CUDA kernel, memset and copy
    the profiler records over `calls` calls (after bench()'s warm-up), summed, / calls.

    Summed, not spanned: idle time between launches is left out, which is the point; kernels
    overlapping on several streams would be counted twice (int8kern launches on one stream).
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    n = len(args_list)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(calls):
            fn(*args_list[i % n])
        torch.cuda.synchronize()
    device_us = sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == DeviceType.CUDA)
    if device_us <= 0:  # no CUPTI on this machine: say so once, keep the end-to-end times
        if not _warned_no_kernels:
            print("  kernel_time: the profiler recorded no CUDA kernel (CUPTI unavailable?): kernel times left out")
            _warned_no_kernels.append(True)
        return None
    return device_us / calls / 1e6


_warned_no_kernels: list = []


def rotation(make: Callable[[int], tuple], bytes_per_set: int, device: str) -> list:
    """Enough argument sets that their total exceeds the GPU's L2 (one set on the CPU)."""
    if device != "cuda":
        return [make(0)]
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    count = max(1, min(16, (2 * l2) // max(1, bytes_per_set) + 1))
    return [make(i) for i in range(count)]
