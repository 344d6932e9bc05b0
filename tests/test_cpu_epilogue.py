"""The CPU dequantize epilogue, bit for bit.

The epilogue (csrc/cpu/epilogue.h) does the reference's float32 arithmetic in the reference's
order, so on the CPU every output dtype must match int8kern.reference exactly, across the
32-column strips and 4-row tiles it works in (odd N and M on both sides of them), with bias,
with `add` in the output dtype or float32, on both GEMM paths (own tiles at M < 64, oneDNN +
one epilogue pass at M >= 256 on VNNI CPUs). int8_linear's outlier term, formed inside the
epilogue, must equal the reference's (reference.outlier_product: the float64 sum rounded to float32
and then to x's dtype, added last). And the AVX-512 code, the scalar code with its outlier sums
in AVX2 (what an AVX2 CPU runs: INT8KERN_CPU_ISA=avx2) and the scalar fallback
(INT8KERN_CPU_SCALAR_EPILOGUE=1; both read once per process) must agree exactly."""
import os
import subprocess
import sys

import pytest
import torch

from int8kern import ops, reference as ref

from conftest import FLOAT_DTYPES, gen, randint8, randn

MS = [1, 3, 4, 5, 9, 64, 71, 259]
NS = [1, 7, 8, 9, 31, 32, 33, 100]


def _same(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("out_dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("add_dtype", ["out", "float32", None])
def test_epilogue_bit_exact(out_dtype, add_dtype):
    for M in MS:
        for N in NS:
            K = 80
            a, b = randint8((M, K), "cpu", seed=M), randint8((N, K), "cpu", seed=N + 100)
            row = torch.rand(M, generator=gen(M + 1)) * 4 + 0.1
            col = torch.rand(N, generator=gen(N + 2)) * 0.2 + 0.01
            bias = randn((N,), out_dtype, "cpu", seed=3)
            add = None
            if add_dtype is not None:
                add = randn((M, N), out_dtype if add_dtype == "out" else torch.float32, "cpu", seed=4, scale=30)
            want = ref.int8_scaled_matmul(a, b, row, col, bias, add, out_dtype)
            _same(ops.int8_scaled_matmul(a, b, row, col, bias, add, out_dtype), want)
            _same(ops.dequantize_matmul(ops.int8_matmul(a, b), row, col, bias, add, out_dtype), want)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("M", [1, 6, 64, 261])
def test_int8_linear_outlier_term_exact(dtype, M):
    K, N = 300, 45
    x = randn((M, K), dtype, "cpu", seed=M, scale=2.0)
    x[:, ::23] *= 6  # ~13 outlier columns
    weight, absmax = ref.quantize_weight(randn((N, K), torch.float32, "cpu", seed=5, scale=0.05))
    bias = randn((N,), dtype, "cpu", seed=6)
    for threshold in (6.0, 0.0, 0.5):  # 0.5: nearly every column is an outlier
        _same(ops.int8_linear(x, weight, absmax, bias, threshold), ref.int8_linear(x, weight, absmax, bias, threshold))


@pytest.mark.parametrize("K", [1, 3, 4, 5, 7, 65])
def test_outlier_weight_columns_at_row_ends(K):
    """The weight's outlier columns are gathered 16 rows at a time with dword gathers on
    AVX-512 (float32 x at decode sizes): a column within 3 bytes of the row's end is read from
    3 bytes before it (its byte then on top), never past the row. The values of both reads
    against the reference: every column an outlier (threshold 0.5), the last weight column at
    -128, N around the 16-row groups and 32-row blocks."""
    g = torch.Generator().manual_seed(K)
    for N in (1, 15, 16, 17, 33, 100):
        for M in (1, 3):
            x = torch.randn(M, K, generator=g) * 3
            weight, absmax = ref.quantize_weight(torch.randn(N, K, generator=g) * 0.05)
            weight[:, -1] = -128
            for threshold in (0.5, 6.0):
                _same(ops.int8_linear(x, weight, absmax, None, threshold),
                      ref.int8_linear(x, weight, absmax, None, threshold))


SCRIPT = r"""
import sys, torch
from int8kern import ops, reference as ref
g = torch.Generator().manual_seed(9)
outs = []
for dtype in (torch.float16, torch.bfloat16, torch.float32):
    for M, K, N in ((1, 50, 33), (7, 64, 100), (70, 129, 41), (258, 40, 35)):
        x = (torch.randn(M, K, generator=g) * 2).to(dtype)
        x[:, ::9] *= 5
        x[0, 3] = float("nan")
        w, wa = ref.quantize_weight(torch.randn(N, K, generator=g) * 0.05)
        bias = torch.randn(N, generator=g).to(dtype)
        outs.append(ops.int8_linear(x, w, wa, bias, 6.0))
        q, ra, _ = ref.quantize_rowwise(x, 0.0)
        add = torch.randn(M, N, generator=g)
        outs.append(ops.int8_scaled_matmul(q, w, ra, wa, bias, add, dtype))
        outs.append(ops.dequantize_matmul(ops.int8_matmul(q, w), ra, wa, None, add.to(dtype), dtype))
torch.save(outs, sys.argv[1])
"""


def test_avx512_avx2_and_scalar_epilogues_agree(tmp_path):
    paths = {}
    settings = [("default", {}), ("scalar", {"INT8KERN_CPU_SCALAR_EPILOGUE": "1"})]
    if torch.ops.int8kern._cpu_isa() != "generic":  # this CPU has AVX2 at least
        settings.append(("avx2", {"INT8KERN_CPU_ISA": "avx2"}))
    for name, extra in settings:
        paths[name] = tmp_path / f"{name}.pt"
        out = subprocess.run([sys.executable, "-c", SCRIPT, str(paths[name])], env=dict(os.environ, **extra),
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
    default, scalar = torch.load(paths["default"]), torch.load(paths["scalar"])
    assert len(default) == len(scalar) == 36
    for d, s in zip(default, scalar):
        _same(d, s)
    if "avx2" in paths:
        for d, a in zip(default, torch.load(paths["avx2"])):
            _same(d, a)
    assert any(torch.isnan(d).any() for d in default)  # the NaN row came through
