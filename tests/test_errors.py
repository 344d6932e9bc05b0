"""Bad input gets a clear error naming the op, the argument, what was expected and what came;
strided input is handled (made contiguous inside) and gives the same result."""
import pytest
import torch

from int8kern import ops, reference as ref

from conftest import randint8, randn


def _operands(device):
    a, b = randint8((6, 32), device, seed=1), randint8((5, 32), device, seed=2)
    row, col = torch.rand(6, device=device) + 0.5, torch.rand(5, device=device) + 0.5
    return a, b, row, col


@pytest.mark.parametrize("call,match", [
    (lambda d: ops.quantize_rowwise(torch.ones(4, 8, dtype=torch.int32, device=d)),
     r"int8kern.quantize_rowwise: x must be float16, bfloat16 or float32 \[M, K\], got int32"),
    (lambda d: ops.quantize_rowwise(torch.ones(8, device=d)), r"quantize_rowwise: x must be .*\[M, K\], got float32 \[8\]"),
    (lambda d: ops.quantize_rowwise(torch.ones(4, 0, device=d)), r"quantize_rowwise: x must have at least one column"),
    (lambda d: ops.quantize_rowwise(torch.ones(4, 8, device=d), float("nan")), r"quantize_rowwise: threshold must be a number"),
    # positive as a double, 0 as the float32 the kernels compare with
    (lambda d: ops.quantize_rowwise(torch.ones(4, 8, device=d), 1e-46), r"quantize_rowwise: threshold must be <= 0 \(no outliers\) or at least the smallest positive float32.*got 1e-46"),
    (lambda d: ops.int8_matmul(torch.ones(4, 8, device=d), randint8((3, 8), d, 0)),
     r"int8kern.int8_matmul: a must be int8 \[M, K\], got float32 \[4, 8\]"),
    (lambda d: ops.int8_matmul(randint8((4, 8), d, 0), torch.ones(3, 8, dtype=torch.float16, device=d)),
     r"int8_matmul: b must be int8 \[N, K\], got float16 \[3, 8\]"),
    (lambda d: ops.int8_matmul(randint8((4, 8), d, 0), randint8((3, 9), d, 1)),
     r"int8_matmul: b must be \[N, K\] with K = 8 \(a's inner dimension\), got int8 \[3, 9\]"),
    (lambda d: ops.int8_matmul(randint8((2, 4, 8), d, 0), randint8((3, 8), d, 1)), r"int8_matmul: a must be int8 \[M, K\], got int8 \[2, 4, 8\]"),
    (lambda d: ops.int8_matmul(randint8((4, 0), d, 0), randint8((3, 0), d, 1)), r"int8_matmul: the inner dimension K must be in \[1, 131071\]"),
    (lambda d: ops.int8_matmul(torch.zeros(1, 131072, dtype=torch.int8, device=d), torch.zeros(1, 131072, dtype=torch.int8, device=d)),
     r"int8_matmul: the inner dimension K must be in \[1, 131071\].*got K = 131072"),
])
def test_bad_input_messages(device, call, match):
    with pytest.raises(RuntimeError, match=match):
        call(device)


def test_epilogue_bad_input(device):
    a, b, row, col = _operands(device)
    acc = ops.int8_matmul(a, b)
    cases = [
        (lambda: ops.dequantize_matmul(acc.float(), row, col), r"dequantize_matmul: acc must be int32 \[M, N\], got float32"),
        (lambda: ops.dequantize_matmul(acc, row[:5], col), r"dequantize_matmul: row_absmax must be of size 6 in dim 0 \(M, one scale per row\), got float32 \[5\]"),
        (lambda: ops.dequantize_matmul(acc, row, col.half()), r"dequantize_matmul: col_absmax must be float32 \[N\], got float16"),
        (lambda: ops.dequantize_matmul(acc, row, torch.ones(6, device=device)), r"col_absmax must be of size 5"),
        (lambda: ops.dequantize_matmul(acc, row, col, bias=torch.ones(4, device=device)), r"dequantize_matmul: bias must be of size 5"),
        (lambda: ops.dequantize_matmul(acc, row, col, bias=torch.ones(5, dtype=torch.int64, device=device)), r"bias must be float16, bfloat16 or float32 \[N\], got int64"),
        (lambda: ops.dequantize_matmul(acc, row, col, add=torch.ones(5, 6, device=device)), r"dequantize_matmul: add must be of size 6 in dim 0"),
        (lambda: ops.dequantize_matmul(acc, row, col, out_dtype=torch.int32), r"dequantize_matmul: out_dtype must be float16, bfloat16 or float32, got int32"),
        (lambda: ops.int8_scaled_matmul(a, b, row, col, add=torch.ones(6, 4, device=device)), r"int8_scaled_matmul: add must be of size 5 in dim 1"),
        (lambda: ops.int8_scaled_matmul(a, b, row.double(), col), r"int8_scaled_matmul: row_absmax must be float32 \[M\], got float64"),
    ]
    for call, match in cases:
        with pytest.raises(RuntimeError, match=match):
            call()


def test_int8_linear_bad_input(device):
    w, absmax = ref.quantize_weight(randn((5, 32), torch.float32, device, seed=3))
    x = randn((3, 32), torch.float32, device, seed=4)
    cases = [
        (lambda: ops.int8_linear(x.int(), w, absmax), r"int8_linear: x must be float16, bfloat16 or float32 \[\.\.\., K\], got int32"),
        (lambda: ops.int8_linear(x[:, :31], w, absmax), r"int8_linear: weight must be int8 \[N, K\] with K = 31 \(x's last dimension\), got int8 \[5, 32\]"),
        (lambda: ops.int8_linear(x, w.float(), absmax), r"int8_linear: weight must be int8 \[N, K\], got float32"),
        (lambda: ops.int8_linear(x, w, absmax[:4]), r"int8_linear: weight_absmax must be of size 5"),
        (lambda: ops.int8_linear(x, w, absmax, torch.ones(4, device=device)), r"int8_linear: bias must be of size 5"),
        (lambda: ops.int8_linear(x, w, absmax, None, float("nan")), r"int8_linear: threshold must be a number"),
        (lambda: ops.int8_linear(x, w, absmax, None, 7e-46), r"int8_linear: threshold must be <= 0 \(no outliers\) or at least the smallest positive float32"),
    ]
    for call, match in cases:
        with pytest.raises(RuntimeError, match=match):
            call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU to mix devices")
def test_tiny_threshold_refused_by_reference_too():
    # 1.4e-45 (the smallest denormal) is a real threshold; 7e-46 rounds to 0 in float32.
    x = torch.ones(2, 8)
    assert ref.quantize_rowwise(x, 1.4e-45)[2].numel() == 8 == ops.quantize_rowwise(x, 1.4e-45)[2].numel()
    with pytest.raises(ValueError, match=r"threshold must be <= 0 .*got 7e-46"):
        ref.quantize_rowwise(x, 7e-46)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU to mix devices")
def test_mixed_devices_refused():
    a, b = randint8((4, 16), "cpu", 0), randint8((3, 16), "cuda", 1)
    with pytest.raises(RuntimeError, match=r"int8_matmul: b must be on the same device as the first argument"):
        ops.int8_matmul(a, b)
    w, absmax = ref.quantize_weight(randn((5, 32), torch.float32, "cuda", seed=3))
    with pytest.raises(RuntimeError, match=r"int8_linear: weight must be on the same device"):
        ops.int8_linear(torch.randn(2, 32), w, absmax)


def test_strided_inputs_are_handled(device):
    x = randn((20, 70), torch.float16, device, seed=5, scale=3)[::2, 3:]  # row-strided, offset
    assert not x.is_contiguous()
    for got, want in zip(ops.quantize_rowwise(x, 6.0), ops.quantize_rowwise(x.contiguous(), 6.0)):
        assert torch.equal(got, want)
    a = randint8((40, 64), device, seed=6)[:, 5:]
    b = randint8((59, 7), device, seed=7).T  # [7, 59], column-major view
    assert torch.equal(ops.int8_matmul(a, b), ops.int8_matmul(a.contiguous(), b.contiguous()))
    xt = randn((59, 4), torch.float32, device, seed=9).T  # [4, 59], column-major
    w2, a2 = ref.quantize_weight(randn((9, 59), torch.float32, device, seed=10))
    assert torch.equal(ops.int8_linear(xt, w2, a2, None, 6.0), ops.int8_linear(xt.contiguous(), w2, a2, None, 6.0))


def test_empty_batch(device):
    w, absmax = ref.quantize_weight(randn((5, 32), torch.float32, device, seed=3))
    y = ops.int8_linear(torch.empty(0, 4, 32, device=device), w, absmax, None, 6.0)
    assert y.shape == (0, 4, 5)
    q, r, c = ops.quantize_rowwise(torch.empty(0, 32, device=device), 6.0)
    assert q.shape == (0, 32) and r.shape == (0,) and c.numel() == 0
    assert ops.int8_matmul(randint8((0, 8), device, 0), randint8((3, 8), device, 1)).shape == (0, 3)
