"""`make bench`: int8kern's ops against the plain PyTorch equivalents on every device found.

CPU suite: quantize_rowwise against the reference (plain PyTorch ops) and a copy of the same
bytes; int8_matmul against torch._int_mm and the float32 matmul; the LLM.int8() layer
(Int8LinearLt) against nn.Linear in float32/bfloat16 and bitsandbytes' Linear8bitLt when it is
importable; then the whole-model text generation table (bench_generate.py): SmolLM2-135M-Instruct
through transformers in float32, bfloat16 and int8kern (eager and compiled) beside llama.cpp at
F32, BF16 and Q8_0 on the same weights and tokens (rows skipped, with the reason, where the model
package or llama.cpp is missing).

GPU suite (issue 11's targets, sized for ~3 minutes on an H200): the machine's ceilings
measured in the same run (device copy bandwidth, bf16 mm TFLOPS); quantize_rowwise
[8192, 8192] float16 threshold 6 against the copy; int8_matmul 8192^3 against torch._int_mm
and torch.mm float16/bfloat16 (TOPS); Int8LinearLt threshold 6 and 0, float16, (K, N) in
{(4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672)}, M from 1 to 4096, against
F.linear float16 and bitsandbytes Linear8bitLt at the same threshold; on sm_90 the same GEMMs
again with the wgmma kernel (INT8KERN_CUDA_GEMM=wgmma), last, as it is not yet validated.

Random inputs, 0.5% of activation columns carrying outliers of magnitude 8-60 (LLM.int8()'s
emergent features). Each time is reported twice where it exists (benchmarks/timing.py):
end-to-end (median per call, host gaps included) and, on CUDA, kernel time (profiler, summed
GPU kernel time per call). Ratios: anchor time / int8kern time (> 1: int8kern is faster).
Writes <out>/<device>.json (after every section, so a crash keeps what was measured) and
<out>/<device>.png (Int8LinearLt's speedup over the float layer by M, one panel per shape).

--dry-run runs every suite on tiny shapes with a few repetitions, on every device found (the
GPU suite on the CPU too), to check the script end to end; tests/test_bench_dry_run.py does.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import tempfile
import time

# No progress bars in the table (transformers' GGUF de-quantization one); tqdm reads this
# when it is imported.
os.environ.setdefault("TQDM_DISABLE", "1")

import torch

import int8kern
from int8kern import ops, reference

import bench_generate
from timing import Timing, cpu_isa, environment, measure, rotation

HERE = os.path.dirname(os.path.abspath(__file__))

TIMING_LEGEND = {
    "ms": "end-to-end: median milliseconds per call, host gaps between launches included "
          "(CUDA events around each call; wall clock on the CPU)",
    "kernel_ms": "CUDA only: GPU kernel time per call, every kernel/memset/copy the profiler "
                 "records, summed (mean over several calls); null on the CPU",
    "vs": "anchor end-to-end time / int8kern end-to-end time (> 1: int8kern is faster)",
    "vs_kernel": "the same ratio from kernel times",
}


def activations(M, K, dtype, device, seed, outlier_frac=0.005):
    """x [M, K]: standard normal with round(outlier_frac * K) columns of magnitude 8-60.
    Generated on the device itself (a CPU generator would take seconds at M = 4096)."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(M, K, generator=g, device=device)
    n_out = max(1, int(round(outlier_frac * K))) if outlier_frac > 0 else 0
    if n_out:
        cols = torch.randperm(K, generator=g, device=device)[:n_out]
        mag = torch.rand(M, n_out, generator=g, device=device) * 52 + 8
        sign = torch.randint(0, 2, (M, n_out), generator=g, device=device) * 2 - 1
        x[:, cols] = mag * sign
    return x.to(dtype)


def try_bitsandbytes():
    try:
        import bitsandbytes as bnb  # noqa: F401
        return bnb
    except Exception:
        return None


def dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


@dataclasses.dataclass
class Suite:
    """Shapes and repetitions of one run. `reps` goes to timing.bench()."""
    quantize: list           # (M, K)
    matmul: list             # (M, K, N)
    layers: list             # (K, N)
    Ms: list
    copy_elems: int          # the copy ceiling's float16 elements
    mm_n: int                # the bf16 matmul ceiling's size
    reps: dict = dataclasses.field(default_factory=dict)


GPU_FULL = Suite(quantize=[(8192, 8192)], matmul=[(8192, 8192, 8192), (16, 8192, 8192)],
                 layers=[(4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672)],
                 Ms=[1, 16, 128, 512, 2048, 4096], copy_elems=1 << 29, mm_n=8192,
                 reps=dict(max_reps=50, budget_s=0.5))
GPU_QUICK = dataclasses.replace(GPU_FULL, layers=GPU_FULL.layers[:2], Ms=[1, 16, 2048])
DRY = Suite(quantize=[(64, 256)], matmul=[(8, 256, 128)], layers=[(256, 128), (128, 256)],
            Ms=[1, 5, 33], copy_elems=1 << 16, mm_n=128,
            reps=dict(min_reps=1, max_reps=2, warmup=1, budget_s=0.0))


class Table:
    """The rows measured so far; prints each as it comes, rewrites the JSON after each section."""

    def __init__(self, device, path, header):
        self.device, self.path, self.header = device, path, header
        self.rows, self.skipped = [], []

    def add(self, group, name, shape, ours: Timing, anchors: dict, extra="", params=None):
        """anchors: {label: Timing}."""
        ms = lambda s: None if s is None else s * 1e3  # noqa: E731
        ratio = lambda a, b: None if a is None or b is None else a / b  # noqa: E731
        row = {"group": group, "op": name, "shape": shape, "ms": ms(ours.e2e_s), "kernel_ms": ms(ours.kernel_s),
               "extra": extra, "params": params or {},
               "vs": {k: ratio(v.e2e_s, ours.e2e_s) for k, v in anchors.items()},
               "vs_kernel": {k: ratio(v.kernel_s, ours.kernel_s) for k, v in anchors.items()},
               "anchor_ms": {k: ms(v.e2e_s) for k, v in anchors.items()},
               "anchor_kernel_ms": {k: ms(v.kernel_s) for k, v in anchors.items()}}
        self.rows.append(row)
        kern = lambda tm: "" if tm.kernel_s is None else f" kernel {tm.kernel_s * 1e3:8.3f} ms"  # noqa: E731
        kratio = lambda a: "" if a.kernel_s is None or ours.kernel_s is None else f", kernel {a.kernel_s / ours.kernel_s:5.2f}x"  # noqa: E731
        ratios = "  ".join(f"{k} {v.e2e_s * 1e3:8.3f} ms ({v.e2e_s / ours.e2e_s:5.2f}x{kratio(v)})"
                           for k, v in anchors.items())
        print(f"{group:<12} {name:<30} {shape:<20} {ours.e2e_s * 1e3:9.3f} ms{kern(ours)}  {extra:<16} {ratios}",
              flush=True)

    def skip(self, what, why):
        self.skipped.append(f"{what}: {why}")
        print(f"  skipped {what}: {why}", flush=True)

    def write(self):
        with open(self.path, "w") as f:
            json.dump({**self.header, "timing": TIMING_LEGEND, "skipped": self.skipped, "rows": self.rows}, f, indent=1)


class Deadline:
    """The run's time budget: sections and measurements started after it are skipped."""

    def __init__(self, budget_s):
        self.start, self.budget_s = time.perf_counter(), budget_s

    def elapsed(self):
        return time.perf_counter() - self.start

    def passed(self):
        return self.budget_s is not None and self.elapsed() > self.budget_s


@contextlib.contextmanager
def cuda_gemm(kind):
    """INT8KERN_CUDA_GEMM=kind for the calls inside (the extension reads it on every launch)."""
    prev = os.environ.get("INT8KERN_CUDA_GEMM")
    os.environ["INT8KERN_CUDA_GEMM"] = kind
    try:
        yield
    finally:
        if prev is None:
            del os.environ["INT8KERN_CUDA_GEMM"]
        else:
            os.environ["INT8KERN_CUDA_GEMM"] = prev


def bench_ceilings(t: Table, device, suite: Suite):
    """What the machine can do, measured in this run: a large device-to-device copy (bytes
    read + written per second), a large bf16 matmul, and the cost of one launch (a one-element
    in-place add, end to end: what each extra kernel of a decode step costs at least)."""
    x = torch.empty(suite.copy_elems, dtype=torch.float16, device=device).normal_()
    copy = measure(lambda a: a.clone(), [(x,)], device, **suite.reps)
    n = suite.mm_n
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    mm = measure(torch.mm, [(a, a.T)], device, **suite.reps)
    ceil = {"copy_GBps": 2 * x.numel() * 2 / copy.e2e_s / 1e9, "bf16_TFLOPS": 2 * n**3 / mm.e2e_s / 1e12}
    t.add("ceiling", f"copy {x.numel() * 2 / 2**20:g} MiB", "", copy, {}, f"{ceil['copy_GBps']:6.0f} GB/s")
    t.add("ceiling", "mm bfloat16", f"{n}^3", mm, {}, f"{ceil['bf16_TFLOPS']:6.0f} TFLOPS")
    one = torch.zeros(1, device=device)
    launch = measure(lambda v: v.add_(1.0), [(one,)], device, **suite.reps)
    ceil["launch_us"] = launch.e2e_s * 1e6
    t.add("ceiling", "one launch (1-element add_)", "", launch, {}, f"{ceil['launch_us']:6.1f} us")
    return ceil


def bench_quantize(t: Table, device, shapes, dtype, reps, ceilings=None):
    for M, K in shapes:
        sets = rotation(lambda i: (activations(M, K, dtype, device, i),), M * K * dtype.itemsize, device)
        ours = measure(lambda x: ops.quantize_rowwise(x, 6.0), sets, device, **reps)
        plain = measure(lambda x: reference.quantize_rowwise(x, 6.0), sets, device, **{**reps, "max_reps": 20})
        copy = measure(lambda x: x.clone(), sets, device, **reps)
        moved = M * K * (dtype.itemsize + 1)  # read x, write q
        gbs = moved / ours.e2e_s / 1e9
        extra = f"{gbs:6.1f} GB/s" + (f" ({100 * gbs / ceilings['copy_GBps']:.0f}% copy)" if ceilings else "")
        t.add("quantize", f"quantize_rowwise {dtype_name(dtype)} th=6", f"{M}x{K}", ours,
              {"plain torch": plain, "copy": copy}, extra, {"M": M, "K": K, "GBps": gbs})


def bench_matmul(t: Table, device, shapes, float_dtypes, reps, variant=None):
    """int8_matmul against torch._int_mm and torch.mm in float_dtypes; variant: also (and only
    then) time the CUDA GEMM under INT8KERN_CUDA_GEMM=variant, against the same anchors."""
    for M, K, N in shapes:
        def make(i):
            g = torch.Generator(device=device).manual_seed(i)
            return (torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8, device=device),
                    torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8, device=device))
        sets = rotation(make, (M + N) * K, device)
        anchors = {}
        try:
            anchors["torch._int_mm"] = measure(lambda a, b: torch._int_mm(a, b.t()), sets, device, **reps)
        except RuntimeError as e:
            print(f"  torch._int_mm unavailable for {M}x{K}x{N}: {str(e).splitlines()[0]}")
        for fd in float_dtypes:
            fsets = [(a.to(fd), b.to(fd)) for a, b in sets]
            anchors[f"mm {dtype_name(fd)}"] = measure(lambda a, b: torch.mm(a, b.t()), fsets, device, **reps)
        for name, kind in [("int8_matmul", None)] + ([(f"int8_matmul {variant}", variant)] if variant else []):
            with cuda_gemm(kind) if kind else contextlib.nullcontext():
                ours = measure(ops.int8_matmul, sets, device, **reps)
            tops = 2 * M * N * K / ours.e2e_s / 1e12
            t.add("int8_matmul", name, f"{M}x{K}x{N}", ours, anchors, f"{tops:7.3f} TOPS",
                  {"M": M, "K": K, "N": N, "TOPS": tops, "gemm": kind or "default"})


def layer_copies(make_layer, weight_bytes, device):
    """Copies of a layer whose weights together exceed twice the GPU's L2, so that a timed
    call never finds its weight in L2 from the previous one (one copy on the CPU)."""
    if device != "cuda":
        return [make_layer()]
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    return [make_layer() for _ in range(max(1, min(8, (2 * l2) // weight_bytes + 1)))]


def bench_linear(t: Table, device, K, N, Ms, x_dtype, float_dtypes, bnb, reps, deadline=None,
                 ceilings=None, variant=None):
    """Int8LinearLt (thresholds 6 and 0) against nn.Linear in float_dtypes (F.linear) and
    bitsandbytes' Linear8bitLt at the same threshold, on the same inputs. Reports the weight
    bytes streamed per second at small M (the floor there) and TOPS at large M, against the
    measured ceilings when given. variant: as in bench_matmul, rows of their own."""
    torch.manual_seed(0)
    with torch.device(device):
        lin = torch.nn.Linear(K, N)
        layers = {th: layer_copies(lambda: int8kern.Int8LinearLt.from_linear(lin, threshold=th), N * K, device)
                  for th in (6.0, 0.0)}
        float_layers = {fd: layer_copies(lambda: torch.nn.Linear(K, N, dtype=fd), N * K * fd.itemsize, device)
                        for fd in float_dtypes}
    bnb_layers = {}
    if bnb is not None:
        state = {k: v.to("cpu", torch.float16) for k, v in lin.state_dict().items()}
        for th in (6.0, 0.0):
            try:
                def make_bnb():
                    layer = bnb.nn.Linear8bitLt(K, N, has_fp16_weights=False, threshold=th)
                    layer.load_state_dict(state)
                    return layer.to(device)
                bnb_layers[th] = layer_copies(make_bnb, N * K, device)
            except Exception as e:  # bitsandbytes without a backend for this device
                print(f"  bitsandbytes Linear8bitLt unavailable on {device}: {e}")
                break
    del lin
    variants = [None] + ([variant] if variant else [])
    for M in Ms:
        if deadline is not None and deadline.passed():
            t.skip(f"Int8LinearLt {K}x{N} M={M}", f"time budget of {deadline.budget_s:g} s spent")
            continue
        xs = rotation(lambda i: activations(M, K, x_dtype, device, i), M * K * x_dtype.itemsize, device)

        def pairs(mods, dtype=x_dtype):  # (layer, input) pairs that rotate both
            n = max(len(mods), len(xs))
            return [(mods[i % len(mods)], xs[i % len(xs)].to(dtype)) for i in range(n)]

        call = lambda m, x: m(x)  # noqa: E731
        with torch.no_grad():
            floats = {f"Linear {dtype_name(fd)}": measure(call, pairs(float_layers[fd], fd), device, **reps)
                      for fd in float_dtypes}
            for th in (6.0, 0.0):
                anchors = dict(floats)
                if th in bnb_layers:  # the same inputs, in the same dtype
                    anchors[f"bnb Linear8bitLt th={th:g}"] = measure(call, pairs(bnb_layers[th]), device, **reps)
                for kind in variants:
                    with cuda_gemm(kind) if kind else contextlib.nullcontext():
                        ours = measure(call, pairs(layers[th]), device, **reps)
                    gbs = N * K / ours.e2e_s / 1e9
                    tops = 2 * M * N * K / ours.e2e_s / 1e12
                    extra = f"{gbs:6.0f} GB/s w" if M <= 16 else f"{tops:6.1f} TOPS"
                    if ceilings and M <= 16:
                        extra += f" ({100 * gbs / ceilings['copy_GBps']:.0f}% copy)"
                    name = f"Int8LinearLt th={th:g} {dtype_name(x_dtype)}" + (f" {kind}" if kind else "")
                    t.add("int8_linear", name, f"M={M} {K}x{N}", ours, anchors, extra,
                          {"M": M, "K": K, "N": N, "threshold": th, "gemm": kind or "default"})


def bench_bnb_functional(t: Table, device, bnb, shapes, reps):
    """bitsandbytes' own int8 pieces against ours, when importable on this device."""
    try:
        F_bnb = bnb.functional
        for M, K, N in shapes:
            x = activations(M, K, torch.float16, device, 0)
            ours = measure(lambda v: ops.quantize_rowwise(v, 6.0), [(x,)], device, **reps)
            theirs = measure(lambda v: F_bnb.int8_vectorwise_quant(v, threshold=6.0), [(x,)], device, **reps)
            t.add("bnb", "quantize_rowwise th=6", f"{M}x{K}", ours, {"bnb int8_vectorwise_quant": theirs})
            a = torch.randint(-127, 128, (M, K), dtype=torch.int8, device=device)
            b = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=device)
            ours = measure(ops.int8_matmul, [(a, b)], device, **reps)
            theirs = measure(F_bnb.int8_linear_matmul, [(a, b)], device, **reps)
            t.add("bnb", "int8_matmul", f"{M}x{K}x{N}", ours, {"bnb int8_linear_matmul": theirs})
    except Exception as e:
        print(f"  bitsandbytes functional API unavailable on {device}: {e}")


def plot_speedup(rows, name, env, path, baseline):
    """Speedup over the float layer `baseline` ("Linear float16") by M, one panel per layer
    shape: Int8LinearLt at each threshold (end-to-end; kernel time dotted where measured),
    bitsandbytes and the other float layers on the same axes. Skipped without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("   (matplotlib not installed: no plot)")
        return
    lin = [r for r in rows if r["group"] == "int8_linear" and baseline in r["anchor_ms"]]
    if not lin:
        return
    shapes = sorted({(r["params"]["K"], r["params"]["N"]) for r in lin})
    fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 4.2), squeeze=False)
    for ax, (K, N) in zip(axes[0], shapes):
        sel = sorted((r for r in lin if (r["params"]["K"], r["params"]["N"]) == (K, N)), key=lambda r: r["params"]["M"])
        series = {}  # label -> [(M, speedup)], kernel-time series dotted

        def point(label, M, base_ms, ms):
            if base_ms and ms:
                series.setdefault(label, {})[M] = base_ms / ms
        for r in sel:
            M, base = r["params"]["M"], r["anchor_ms"][baseline]
            gemm = r["params"]["gemm"]
            label = f"int8kern th={r['params']['threshold']:g}" + ("" if gemm == "default" else f" {gemm}")
            point(label, M, base, r["ms"])
            point(label + " (kernel time)", M, r["anchor_kernel_ms"][baseline], r["kernel_ms"])
            for anchor, ms in r["anchor_ms"].items():
                if anchor != baseline:
                    point(anchor, M, base, ms)
        for label, pts in series.items():
            ms_sorted = sorted(pts)
            ax.plot(ms_sorted, [pts[m] for m in ms_sorted], marker="o", ms=3,
                    ls=":" if "kernel" in label else ("--" if not label.startswith("int8kern") else "-"), label=label)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel(f"speedup over {baseline} (x)")
        ax.set_title(f"K={K}, N={N}")
        ax.legend(fontsize=6)
    fig.suptitle(f"int8kern on {name} ({env['date']}, torch {env['torch']}, {env['commit']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"   written: {os.path.relpath(path)}")


def cpu_suite(t: Table, device, bnb, quick, dry):
    reps = DRY.reps if dry else {}
    bench_quantize(t, device, [(64, 256)] if dry else [(512, 4096), (4096, 4096)], torch.float32, reps)
    bench_quantize(t, device, [(64, 256)] if dry else [(4096, 4096)], torch.bfloat16, reps)
    t.write()
    mm = [(1, 256, 128), (16, 256, 128)] if dry else [(1, 4096, 4096), (16, 4096, 4096)] + ([] if quick else [(512, 4096, 4096)])
    bench_matmul(t, device, mm, [torch.float32], reps)
    t.write()
    K, N, Ms = (256, 128, [1, 16]) if dry else (4096, 4096, [1, 16] + ([] if quick else [512]))
    bench_linear(t, device, K, N, Ms, torch.float32, [torch.float32, torch.bfloat16], bnb, reps)
    t.write()
    # The whole-model generation table (SmolLM2 against llama.cpp; a tiny model in the dry run).
    t.header["generate"] = bench_generate.run(dry_run=dry)


def gpu_suite(t: Table, device, bnb, suite: Suite, deadline: Deadline, wgmma: bool):
    """Issue 11's suite, in the order of what matters most if the budget runs out."""
    def section(title):
        if deadline.passed():
            t.skip(title, f"time budget of {deadline.budget_s:g} s spent")
            return False
        print(f"-- {title} (at {deadline.elapsed():.0f} s)", flush=True)
        return True

    ceil = bench_ceilings(t, device, suite) if section("ceilings") else None
    t.write()
    if section("quantize_rowwise"):
        bench_quantize(t, device, suite.quantize, torch.float16, suite.reps, ceilings=ceil)
        t.write()
    if section("int8_matmul"):
        bench_matmul(t, device, suite.matmul, [torch.float16, torch.bfloat16], suite.reps)
        t.write()
    for K, N in suite.layers:
        if section(f"Int8LinearLt {K}x{N}"):
            bench_linear(t, device, K, N, suite.Ms, torch.float16, [torch.float16, torch.bfloat16], bnb, suite.reps,
                         deadline=deadline, ceilings=ceil)
            t.write()
    if bnb is not None and section("bitsandbytes functional"):
        bench_bnb_functional(t, device, bnb, suite.matmul, suite.reps)
        t.write()
    # Last: a kernel not yet run on hardware could take the CUDA context down with it.
    if wgmma and section("wgmma GEMM (INT8KERN_CUDA_GEMM=wgmma)"):
        bench_matmul(t, device, suite.matmul, [torch.float16, torch.bfloat16], suite.reps, variant="wgmma")
        t.write()
        for K, N in suite.layers:
            if section(f"Int8LinearLt {K}x{N} wgmma"):
                bench_linear(t, device, K, N, suite.Ms, torch.float16, [torch.float16], None, suite.reps,
                             deadline=deadline, variant="wgmma")
                t.write()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--quick", action="store_true", help="fewer shapes")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny shapes, a few repetitions, every suite on every device found (the GPU suite on the "
                        "CPU too); writes to a temporary directory unless --out is given")
    p.add_argument("--budget-s", type=float, default=180.0,
                   help="wall-time budget of the GPU suite: sections not started by then are skipped, and listed "
                        "under 'skipped' in the JSON (default 180)")
    p.add_argument("--no-wgmma", action="store_true", help="on sm_90, skip the wgmma GEMM rows")
    p.add_argument("--out", help="directory for <device>.json and .png (default benchmarks/results)")
    args = p.parse_args(argv)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    out = args.out or (tempfile.mkdtemp(prefix="int8kern-bench-dry-") if args.dry_run else os.path.join(HERE, "results"))
    os.makedirs(out, exist_ok=True)
    bnb = try_bitsandbytes()
    isa = cpu_isa()  # first: what the CPU rows' speed depends on
    print(f"CPU: {isa['cpu']}; ISA: {isa['isa']} ("
          + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in isa["flags"].items()) + ")", flush=True)
    for device in devices:
        env = environment(device)
        name = env.get("gpu") if device == "cuda" else f"cpu-{env['cpu']}"
        print(f"\n== int8kern benchmarks on {name}{' (dry run)' if args.dry_run else ''}: "
              + ", ".join(f"{k} {v}" for k, v in env.items()))
        print(f"   bitsandbytes: {getattr(bnb, '__version__', 'not installed')}")
        print("   times: end-to-end median per call (host gaps included)"
              + ("; 'kernel': summed GPU kernel time per call (torch.profiler)" if device == "cuda" else "")
              + "; (Nx) = anchor time / int8kern time", flush=True)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
        deadline = Deadline(args.budget_s if device == "cuda" else None)
        t = Table(device, os.path.join(out, f"{slug}.json"),
                  {"environment": env, "bitsandbytes": getattr(bnb, "__version__", None), "dry_run": args.dry_run,
                   "budget_s": deadline.budget_s})
        if device == "cpu":
            cpu_suite(t, device, bnb, args.quick, args.dry_run)
        wgmma = device == "cuda" and torch.cuda.get_device_capability() == (9, 0) and not args.no_wgmma
        if device == "cuda" or args.dry_run:
            suite = DRY if args.dry_run else GPU_QUICK if args.quick else GPU_FULL
            gpu_suite(t, device, bnb, suite, deadline, wgmma)
        t.header["elapsed_s"] = deadline.elapsed()
        t.write()
        # The GPU suite's float16 layer (which the dry run also runs on the CPU), else float32.
        baseline = "Linear float16" if device == "cuda" or args.dry_run else "Linear float32"
        plot_speedup(t.rows, name, env, os.path.join(out, f"{slug}.png"), baseline)
        print(f"   written: {os.path.relpath(t.path)} ({deadline.elapsed():.0f} s)")


if __name__ == "__main__":
    main()
