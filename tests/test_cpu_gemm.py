"""The CPU int8 GEMM's own kernels, whatever oneDNN would take.

int8_matmul on the CPU hands M >= 256 (K >= 16) to oneDNN on AVX512-VNNI/AMX machines; the
tests in test_ops.py then exercise int8kern's tiles only at small M. Here a fresh process
with INT8KERN_CPU_ONEDNN=0 (read once per process) runs the VNNI tiles (or the AVX2 ones on
CPUs without VNNI) on every M, with K around the 64-byte steps and the 2048-byte K slices,
and at the int32 extremes. int32 results must be exact."""
import os
import subprocess
import sys

import torch

SCRIPT = r"""
import torch, int8kern
from int8kern import ops, reference as ref
g = torch.Generator().manual_seed(7)
shapes = [(M, K, N) for M in (1, 2, 5, 64, 130) for K in (1, 63, 64, 65, 2047, 2048, 2049, 4160)
          for N in (1, 7, 33)]
bad = []
for M, K, N in shapes:
    a = torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8)
    if not torch.equal(ops.int8_matmul(a, b), ref.int8_matmul(a, b)):
        bad.append((M, K, N))
    s_a, s_w = torch.rand(M, generator=g) + 0.5, torch.rand(N, generator=g) + 0.5
    got = ops.int8_scaled_matmul(a, b, s_a, s_w, out_dtype=torch.float32)
    want = ref.int8_scaled_matmul(a, b, s_a, s_w, out_dtype=torch.float32)
    if not torch.equal(got, want):
        bad.append(("scaled", M, K, N))
# |C| at its largest: -128 * -128 * K with K = 131071 is 2^31 - 16384, still an int32.
a = torch.full((65, 131071), -128, dtype=torch.int8)
if not torch.equal(ops.int8_matmul(a, a[:3]), ref.int8_matmul(a, a[:3])):
    bad.append("extreme")
print("BAD", bad)
"""


def test_cpu_gemm_tiles_exact_without_onednn():
    env = dict(os.environ, INT8KERN_CPU_ONEDNN="0")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "BAD []" in out.stdout, out.stdout[-2000:]


def test_cpu_gemm_k1_large_m():
    """K = 1 at M >= 256: torch 2.14.1's _int_mm returns garbage there on AVX512-VNNI (Zen 4),
    so int8kern keeps such shapes on its own tiles."""
    from int8kern import ops, reference as ref
    g = torch.Generator().manual_seed(3)
    for M in (256, 4096):
        a = torch.randint(-128, 128, (M, 1), generator=g, dtype=torch.int8)
        b = torch.randint(-128, 128, (5, 1), generator=g, dtype=torch.int8)
        assert torch.equal(ops.int8_matmul(a, b), ref.int8_matmul(a, b))
