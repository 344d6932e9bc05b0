"""The CPU int8 GEMM against float32 torch.mm, per instruction set (issue 20).

    python benchmarks/avx2_gemm.py [--isa avx2,vnni] [--Ms 1,16,256,512] [--K 4096 --N 4096]

Each --isa setting runs in a fresh process (the caps below are read once, at start-up), and
within it every case is timed in interleaved rounds (one call of each case per round; the
median over rounds is reported; the order rotates), so the ratios of one setting come from
one run. Ratios are
fp32 time / case time (> 1: faster than float32).

  avx2  emulates an AVX2 machine without VNNI: INT8KERN_CPU_ISA=avx2 (int8kern's tiles),
        MKL_ENABLE_INSTRUCTIONS=AVX2 (float32 torch.mm is MKL's sgemm), ONEDNN_MAX_CPU_ISA=AVX2
        (torch._int_mm is oneDNN's) and ATEN_CPU_CAPABILITY=avx2 (ATen's own kernels).
  vnni  the CPU as it is (no caps); needs AVX512-VNNI.

Cases, with K x N weights as nn.Linear holds them and activations quantized like
quantize_rowwise's (int8 in [-127, 127]):
  fp32 mm            torch.mm(x, w.t()), float32: the anchor
  int8_matmul        int8kern's int32 GEMM as shipped for the setting
  int8_matmul a=-128 the same with one -128 in a: on avx2 that takes the int16 (vpmaddwd) tiles,
                     the kernel used before the sign trick (-128 is outside its exact range)
  torch._int_mm      oneDNN's int8 GEMM (on a real AVX2-only CPU torch 2.14.1 does not call
                     oneDNN here; benchmarks/NOTES.md)
  Int8LinearLt th=0  the whole layer (quantize, GEMM, dequantize), float32 x
Writes <out>/avx2_gemm.json with both settings.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

sys.path.insert(0, HERE)
from timing import EMULATE_AVX2_ENV  # noqa: E402

SETTINGS = {
    "avx2": EMULATE_AVX2_ENV,
    "vnni": {"INT8KERN_CPU_ISA": "vnni"},
}


def run_setting(args) -> dict:
    """The child: times every case at every M in this process's setting."""
    import torch

    from timing import environment

    import int8kern
    from int8kern import ops

    g = torch.Generator().manual_seed(0)
    K, N = args.K, args.N
    w = torch.randn(N, K, generator=g)
    lin = torch.nn.Linear(K, N, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    layer = int8kern.Int8LinearLt.from_linear(lin, threshold=0.0)
    w8 = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    rows = []
    for M in args.Ms:
        x = torch.randn(M, K, generator=g)
        a8 = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
        a8_min = a8.clone()
        a8_min[0, 0] = -128
        cases = {
            "fp32 mm": lambda: torch.mm(x, w.t()),
            "int8_matmul": lambda: ops.int8_matmul(a8, w8),
            "int8_matmul a=-128": lambda: ops.int8_matmul(a8_min, w8),
            "torch._int_mm": lambda: torch._int_mm(a8, w8.t()),
            "Int8LinearLt th=0": lambda: layer(x),
        }
        for fn in cases.values():  # warm-up (oneDNN builds its primitive on the first call)
            fn(), fn()
        times = {name: [] for name in cases}
        start = time.perf_counter()
        rounds = 0
        while rounds < args.min_rounds or (rounds < args.max_rounds and time.perf_counter() - start < args.budget_s):
            # The order rotates each round: a case that follows torch's OpenMP ops (MKL, oneDNN)
            # runs while their threads still spin-wait on the other core.
            order = list(cases.items())
            order = order[rounds % len(order):] + order[:rounds % len(order)]
            for name, fn in order:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
            rounds += 1
        ms = {name: 1e3 * statistics.median(ts) for name, ts in times.items()}
        rows.append({"M": M, "K": K, "N": N, "rounds": rounds, "ms": ms,
                     "fp32_over": {name: ms["fp32 mm"] / t for name, t in ms.items() if name != "fp32 mm"}})
    env = environment("cpu")
    env.update({"int8kern_cpu_isa": torch.ops.int8kern._cpu_isa(),
                "int8kern_threads": torch.ops.int8kern._cpu_threads(),
                "caps": {k: os.environ.get(k) for k in SETTINGS["avx2"]},
                "loadavg": os.getloadavg()})
    return {"env": env, "rows": rows}


def print_setting(name: str, result: dict) -> None:
    env = result["env"]
    print(f"\n== {name}: int8kern ISA {env['int8kern_cpu_isa']}, ATen {env['cpu_capability']}, "
          f"{env['int8kern_threads']} threads, commit {env['commit']}, {env['date']}, load {env['loadavg']}")
    names = [n for n in result["rows"][0]["ms"]]
    print(f"{'M':>5} {'rounds':>6} " + " ".join(f"{n:>20}" for n in names))
    for r in result["rows"]:
        print(f"{r['M']:>5} {r['rounds']:>6} " + " ".join(f"{r['ms'][n]:>17.2f} ms" for n in names))
        print(f"{'':>5} {'fp32/':>6} " + " ".join(f"{'':>20}" if n == "fp32 mm" else f"{r['fp32_over'][n]:>19.2f}x"
                                              for n in names))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--isa", default="avx2,vnni", help="comma-separated settings: avx2, vnni")
    p.add_argument("--Ms", default="1,16,256,512")
    p.add_argument("--K", type=int, default=4096)
    p.add_argument("--N", type=int, default=4096)
    p.add_argument("--min-rounds", type=int, default=7)
    p.add_argument("--max-rounds", type=int, default=200)
    p.add_argument("--budget-s", type=float, default=20.0, help="per M, per setting")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.Ms = [int(m) for m in args.Ms.split(",")]
    if args.child:
        print(json.dumps(run_setting(args)))
        return
    results = {}
    for name in args.isa.split(","):
        env = dict(os.environ, **SETTINGS[name])
        cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--Ms", ",".join(map(str, args.Ms)),
               "--K", str(args.K), "--N", str(args.N), "--min-rounds", str(args.min_rounds),
               "--max-rounds", str(args.max_rounds), "--budget-s", str(args.budget_s)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{name}: {out.stderr[-3000:]}")
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print_setting(name, results[name])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "avx2_gemm.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
