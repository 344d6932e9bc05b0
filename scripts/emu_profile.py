"""What Nsight Compute would count, per op call, from the CUDA emulator (int8kern.emu).

For each case: kernel launches, device allocations, memsets, library (cuBLAS) calls and host syncs
that one call of the op makes on CUDA (int8_linear: a call after the first, which allocates the
stream's cached workspaces), and the main loops' memory behaviour: shared-memory
wavefronts per ldmatrix matrix (1 = conflict-free) and per cp.async warp request (4 = conflict-free:
512 bytes in 128-byte wavefronts), global 32-byte sectors per cp.async request (16 = every byte
fetched used), TMA boxes and wgmma / mma.sync instructions.

The emulator counts what the kernels do, not how long it takes: timing needs the GPU (make
gpu-bench). Decode shapes are the benchmark's (K = N = 4096); the larger ones are cut to what the
emulator runs in seconds (it runs one CUDA thread at a time).

    python scripts/emu_profile.py [--json OUT] [--device h200|a100]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

import int8kern
from int8kern import emu, reference as ref

# (op, M, K, N, threshold, GEMM main loop): int8_linear at M in {1, 16, 17, 512} (decode, the
# largest decode plan, the first mid-size plan, a prefill), thresholds 0 and 6.
CASES = [
    ("int8_linear", M, K, N, threshold, "mma")
    for M, K, N in ((1, 4096, 4096), (16, 4096, 4096), (17, 1024, 1024), (512, 512, 512))
    for threshold in (0.0, 6.0)
] + [
    ("int8_matmul", 256, 512, 4096, None, "mma"),    # 64x64 tiles, no split: plain tiled
    ("int8_matmul", 256, 512, 4096, None, "wgmma"),  # the same plan, taken by the wgmma kernel
]


def inputs(M, K, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g, dtype=torch.float32).to(torch.float16)
    x[:, :: max(1, K // 8)] *= 8.0  # a few outlier columns (|x| >= 6 somewhere in each)
    w, absmax = ref.quantize_weight(torch.randn(N, K, generator=g) * 0.05)
    return x, w, absmax


def profile(op, M, K, N, threshold, loop):
    os.environ["INT8KERN_CUDA_GEMM"] = loop
    x, w, absmax = inputs(M, K, N)
    with emu.backend(emu.device()):
        if op == "int8_linear":
            # One call first: the per-stream zeroed workspaces are allocated (and zeroed) on a
            # stream's first call that needs them, and reused by every later call.
            int8kern.int8_linear(x, w, absmax, None, threshold)
            emu.reset_stats()
            int8kern.int8_linear(x, w, absmax, None, threshold)
        else:
            a, _, _ = int8kern.quantize_rowwise(x, 0.0)
            emu.reset_stats()
            int8kern.int8_matmul(a, w)
        s = emu.stats()
    os.environ.pop("INT8KERN_CUDA_GEMM", None)
    ratio = lambda a, b: round(s[a] / s[b], 3) if s[b] else None  # noqa: E731
    return {
        "op": op, "M": M, "K": K, "N": N, "threshold": threshold, "main_loop": loop,
        "launches": s["launches"] + s["library_calls"], "kernel_launches": s["launches"],
        "library_calls": s["library_calls"], "allocations": s["allocations"], "memsets": s["memsets"],
        "host_syncs": s["host_syncs"], "blocks": s["blocks"], "mma_sync": s["mma_sync"], "wgmma": s["wgmma"],
        "tma_loads": s["tma_loads"],
        "ldmatrix_wavefronts_per_request": ratio("ldmatrix_wavefronts", "ldmatrix_requests"),
        "cp_async_wavefronts_per_request": ratio("cp_async_wavefronts", "cp_async_requests"),
        "cp_async_sectors_per_request": ratio("cp_async_sectors", "cp_async_requests"),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--device", default="h200", choices=emu.DEVICES)
    args = p.parse_args(argv)
    if not emu.available():
        sys.exit("int8kern was built without the CUDA emulator (it needs the CUDA toolkit's headers)")
    emu.set_device(args.device)
    rows = [profile(*c) for c in CASES]
    cols = ["op", "M", "K", "N", "threshold", "main_loop", "launches", "library_calls", "allocations", "memsets",
            "host_syncs", "ldmatrix_wavefronts_per_request", "cp_async_wavefronts_per_request",
            "cp_async_sectors_per_request", "mma_sync", "wgmma", "tma_loads"]
    print(f"CUDA emulator, {args.device}: per op call (launches = kernels + library calls)")
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
