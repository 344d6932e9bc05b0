"""int8kern on a CPU without AVX-512, for real: the ops run under valgrind, whose virtual CPU
reports and executes x86-64 up to AVX2 (no AVX-512, no VNNI). Unlike INT8KERN_CPU_ISA=avx2
(which caps int8kern's own dispatch on this CPU), everything then sees an AVX2-only machine:
int8kern's CPUID detection, GCC's target_clones resolvers, torch's own kernels and libraries.
An AVX-512 instruction reached on such a CPU is an illegal instruction, which kills the
process; a wrong path gives results that differ from int8kern.reference, which are compared
exactly (int32 products, and the CPU epilogue's outputs bit for bit). Skipped where valgrind
is not installed; the machines this project is built and tested on have it."""
import os
import shutil
import subprocess
import sys

import pytest

SCRIPT = r"""
import torch, int8kern
from int8kern import ops, reference as ref
print("ISA", torch.ops.int8kern._cpu_isa(), torch.backends.cpu.get_cpu_capability(), flush=True)
torch.set_num_threads(2)  # int8kern's helpers (and the OpenMP team for the larger GEMM) too
g = torch.Generator().manual_seed(1)
bad = []
def same(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.float().nan_to_num(7.0), b.float().nan_to_num(7.0))
# M: the dot rows (1), the row stream (6), blocked tiles (40) and the size where a VNNI CPU
# would take oneDNN (300); K and N odd.
for M, K, N in ((1, 200, 67), (6, 1031, 129), (40, 300, 70), (300, 257, 96)):
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = (torch.randn(M, K, generator=g) * 2).to(dtype)
        x[:, 7::50] = 9.0  # outlier columns
        x[-1, 3] = float("nan")
        w, wa = ref.quantize_weight(torch.randn(N, K, generator=g) * 0.05)
        bias = torch.randn(N, generator=g).to(dtype)
        got, want = ops.quantize_rowwise(x, 6.0), ref.quantize_rowwise(x, 6.0)
        if not all(same(a, b) for a, b in zip(got, want)): bad.append(("quantize_rowwise", M, K, N, dtype))
        q, ra, _ = want
        if not torch.equal(ops.int8_matmul(q, w), ref.int8_matmul(q, w)): bad.append(("int8_matmul", M, K, N))
        if not same(ops.int8_linear(x, w, wa, bias, 6.0), ref.int8_linear(x, w, wa, bias, 6.0)):
            bad.append(("int8_linear", M, K, N, dtype))
        if not same(ops.int8_scaled_matmul(q, w, ra, wa, bias, None, dtype),
                    ref.int8_scaled_matmul(q, w, ra, wa, bias, None, dtype)):
            bad.append(("int8_scaled_matmul", M, K, N, dtype))
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    qh = torch.randn(2, 9, 1, 64, generator=g).to(dtype)
    k, v = (torch.randn(2, 3, 70, 64, generator=g).to(dtype) for _ in range(2))
    mask = torch.ones(1, 1, 1, 70, dtype=torch.bool)
    mask[..., 50:] = False
    a, b = ops.decode_attention(qh, k, v, mask), ref.decode_attention(qh, k, v, mask)
    if not torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-2): bad.append(("decode_attention", dtype))
lin = torch.nn.Linear(300, 70)
layer = int8kern.Int8LinearLt.from_linear(lin, threshold=6.0)
x = torch.randn(3, 300, generator=g) * 3
with torch.no_grad():
    if (layer(x) - lin(x)).abs().max().item() > 0.5: bad.append("Int8LinearLt")
print("BAD", bad)
"""


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="an x86-64 CPU question")
def test_ops_on_a_cpu_without_avx512():
    env = {k: v for k, v in os.environ.items() if k != "INT8KERN_CPU_ISA"}
    proc = subprocess.run(["valgrind", "--tool=none", "-q", sys.executable, "-c", SCRIPT], env=env,
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]  # SIGILL: an instruction this CPU does not have
    assert "ISA avx2 AVX2" in proc.stdout, out[-3000:]  # detected, not capped: no AVX-512 here
    assert "BAD []" in proc.stdout, out[-3000:]
