"""Which CUDA GEMM main loop should be the default on this GPU: mma.sync or wgmma?

Times int8_matmul and int8_linear (float16, threshold 6, 0.5% outlier columns) with
INT8KERN_CUDA_GEMM=mma and =wgmma side by side, same inputs, at M in {1, 16, 2048}, K = 4096,
N in {4096, 11008}, and names the GEMM kernel that ran (the profiler's kernel names): with
wgmma asked for, decode and mid sizes still run mma.sync's split-K kernels by design.
Prints a table; writes benchmarks/results/gemm_choice-<gpu>.json (or --out DIR).
On a machine without CUDA it says so and exits 0 (nothing to choose).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import bench, environment  # noqa: E402

import int8kern  # noqa: E402
from int8kern import ops, reference as ref  # noqa: E402


def gemm_kernels(fn) -> list:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = {e.name for e in prof.events() if "int8_gemm" in e.name}
    return sorted({n.split("<")[0].split("(")[0].replace("void ", "") for n in names})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--budget-per-case-s", type=float, default=0.3)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gemm_choice: no CUDA GPU here, nothing to compare")
        return
    g = torch.Generator().manual_seed(0)
    rows = []
    print(f"{'op':12} {'M':>5} {'K':>5} {'N':>6} {'mma ms':>8} {'wgmma ms':>9} {'wgmma/mma':>9}  kernels (wgmma setting)")
    for N in (4096, 11008):
        K = 4096
        w, absmax = ref.quantize_weight(torch.randn(N, K, generator=g).cuda())
        for M in (1, 16, 2048):
            a = torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8).cuda()
            x = torch.randn(M, K, generator=g)
            x[:, torch.randperm(K, generator=g)[: K // 200]] *= 20  # 0.5% outlier columns
            x = x.half().cuda()
            cases = {"int8_matmul": lambda: ops.int8_matmul(a, w),
                     "int8_linear": lambda: ops.int8_linear(x, w, absmax, None, 6.0)}
            for op, fn in cases.items():
                times, kernels, outs = {}, {}, {}
                for setting in ("mma", "wgmma"):
                    os.environ["INT8KERN_CUDA_GEMM"] = setting
                    outs[setting] = fn()
                    times[setting] = bench(lambda: fn(), [()], "cuda", min_reps=10, max_reps=200,
                                           budget_s=args.budget_per_case_s)
                    kernels[setting] = gemm_kernels(fn)
                same = torch.equal(outs["mma"], outs["wgmma"])  # same epilogue: the same bits (no NaN here)
                ratio = times["wgmma"] / times["mma"]
                rows.append({"op": op, "M": M, "K": K, "N": N, "mma_ms": times["mma"] * 1e3,
                             "wgmma_ms": times["wgmma"] * 1e3, "wgmma_over_mma": ratio,
                             "kernels": kernels, "same_bits": same})
                print(f"{op:12} {M:5} {K:5} {N:6} {times['mma'] * 1e3:8.4f} {times['wgmma'] * 1e3:9.4f} "
                      f"{ratio:9.3f}  {','.join(kernels['wgmma'])}{'' if same else '  RESULTS DIFFER'}")
    os.environ.pop("INT8KERN_CUDA_GEMM", None)
    os.makedirs(args.out, exist_ok=True)
    slug = torch.cuda.get_device_name().replace(" ", "_")
    path = os.path.join(args.out, f"gemm_choice-{slug}.json")
    with open(path, "w") as f:
        json.dump({"environment": environment("cuda"), "int8kern": int8kern.__version__, "rows": rows}, f, indent=1)
    print(f"wrote {path}")
    if not all(r["same_bits"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
