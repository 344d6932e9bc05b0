"""The CPU int8 GEMM's own kernels, whatever oneDNN would take, on every instruction set.

int8_matmul on the CPU hands M >= 256 (K >= 16) to oneDNN on AVX512-VNNI/AMX machines; the
tests in test_ops.py then exercise int8kern's tiles only at small M. Here fresh processes
with INT8KERN_CPU_ONEDNN=0 and INT8KERN_CPU_ISA (both read once per process) run each kernel
family on every M, with K around the 32/64-byte steps and the K slices, and at the int32
extremes: the CPU's own (VNNI here; M <= 8 reads the weight rows one after another, larger M
uses the tiles), the AVX2 sign-trick tiles (a without -128) and the int16
tiles they fall back to (a holding -128), and the portable loops. int32 results must be exact."""
import os
import subprocess
import sys

import pytest
import torch

SCRIPT = r"""
import sys, torch, int8kern
from int8kern import ops, reference as ref
print("ISA", torch.ops.int8kern._cpu_isa())
g = torch.Generator().manual_seed(7)
shapes = [(M, K, N) for M in (1, 2, 3, 4, 5, 8, 9, 64, 130) for K in (1, 31, 33, 63, 64, 65, 2047, 2048, 2049, 4160)
          for N in (1, 7, 33)]
bad = []

def check(a, b, what):
    if not torch.equal(ops.int8_matmul(a, b), ref.int8_matmul(a, b)):
        bad.append((what, tuple(a.shape), b.shape[0]))

for M, K, N in shapes:
    # Any int8 in both operands (on AVX2 an a with -128 takes the int16 tiles).
    a = torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8)
    check(a, b, "any")
    s_a, s_w = torch.rand(M, generator=g) + 0.5, torch.rand(N, generator=g) + 0.5
    got = ops.int8_scaled_matmul(a, b, s_a, s_w, out_dtype=torch.float32)
    want = ref.int8_scaled_matmul(a, b, s_a, s_w, out_dtype=torch.float32)
    if not torch.equal(got, want):
        bad.append(("scaled", M, K, N))
    # a as quantize_rowwise makes it ([-127, 127]: the AVX2 sign-trick tiles), mostly at its
    # extremes, against b at its own (-128 included): the largest int16 pair sums, 128 * 127 * 2.
    ext = torch.tensor([-127, 127, -1, 0, 1], dtype=torch.int8)
    a = ext[torch.randint(0, 5, (M, K), generator=g)]
    b = torch.tensor([-128, 127, -127, 0, 1], dtype=torch.int8)[torch.randint(0, 5, (N, K), generator=g)]
    check(a, b, "extremes")
    a = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
    check(a, b, "no -128 in a")
    got = ops.int8_scaled_matmul(a, b, s_a, s_w, out_dtype=torch.float32)
    if not torch.equal(got, ref.int8_scaled_matmul(a, b, s_a, s_w, out_dtype=torch.float32)):
        bad.append(("scaled, no -128 in a", M, K, N))
# |C| at its largest: -128 * -128 * K with K = 131071 is 2^31 - 16384, still an int32; with
# a in [-127, 127] (the sign-trick tiles), -127 * -128 * K.
a = torch.full((65, 131071), -128, dtype=torch.int8)
check(a, a[:3], "extreme -128")
a127 = torch.full((65, 131071), -127, dtype=torch.int8)
check(a127, a[:3], "extreme -127 x -128")
check(a127, -a127[:3], "extreme -127 x 127")
# The same at decode sizes (M <= 8: the weight rows streamed in address order), N = 5 for a
# group of four weight rows and one more.
for M in (1, 4, 7):
    check(a[:M], a[:5], "extreme -128, M = %d" % M)
    check(a127[:M], a[:5], "extreme -127 x -128, M = %d" % M)
print("BAD", bad)
"""


def run_script(**env_vars):
    env = dict(os.environ, INT8KERN_CPU_ONEDNN="0", **env_vars)
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)


def detected_isa():
    return subprocess.run([sys.executable, "-c", "import torch, int8kern; print(torch.ops.int8kern._cpu_isa())"],
                          env={k: v for k, v in os.environ.items() if k != "INT8KERN_CPU_ISA"},
                          capture_output=True, text=True, check=True).stdout.split()[-1]


def test_cpu_gemm_tiles_exact_without_onednn():
    out = run_script()
    assert out.returncode == 0, out.stderr[-2000:]
    assert "BAD []" in out.stdout, out.stdout[-2000:]


@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_cpu_gemm_tiles_exact_per_isa(isa):
    """INT8KERN_CPU_ISA=avx2: the sign-trick tiles (and the int16 ones for an a with -128), as
    on a CPU without VNNI; generic: the portable loops."""
    if isa == "avx2" and detected_isa() == "generic":
        pytest.skip("this CPU has no AVX2")
    out = run_script(INT8KERN_CPU_ISA=isa)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"ISA {isa}\n" in out.stdout, out.stdout[-2000:]
    assert "BAD []" in out.stdout, out.stdout[-2000:]


def test_cpu_isa_override_errors():
    code = "import torch, int8kern; torch.ops.int8kern._cpu_isa()"
    env = dict(os.environ, INT8KERN_CPU_ISA="sse9")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "INT8KERN_CPU_ISA" in out.stderr, out.stderr[-2000:]
    # The ops too, not only the query: the GEMM reads the same setting.
    code = ("import torch, int8kern; from int8kern import ops; "
            "ops.int8_matmul(torch.ones(2, 8, dtype=torch.int8), torch.ones(3, 8, dtype=torch.int8))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "INT8KERN_CPU_ISA" in out.stderr, out.stderr[-2000:]


def test_cpu_gemm_k1_large_m():
    """K = 1 at M >= 256: torch 2.14.1's _int_mm returns garbage there on AVX512-VNNI (Zen 4),
    so int8kern keeps such shapes on its own tiles."""
    from int8kern import ops, reference as ref
    g = torch.Generator().manual_seed(3)
    for M in (256, 4096):
        a = torch.randint(-128, 128, (M, 1), generator=g, dtype=torch.int8)
        b = torch.randint(-128, 128, (5, 1), generator=g, dtype=torch.int8)
        assert torch.equal(ops.int8_matmul(a, b), ref.int8_matmul(a, b))
