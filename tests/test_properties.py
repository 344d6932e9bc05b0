"""Property-based tests: random shapes (odd and tiny ones included), dtypes, thresholds, value
scales and outlier patterns; each op against int8kern.reference. 500 examples per op and
device in CI (the "ci" profile in conftest.py), 1500 with HYPOTHESIS_PROFILE=gpu."""
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

from int8kern import ops, reference as ref  # noqa: E402

from conftest import DEVICES, FLOAT_DTYPES, assert_close_to_f64, on_device  # noqa: E402

dims = st.one_of(st.integers(1, 8), st.integers(9, 300), st.sampled_from([15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129]))
dtypes = st.sampled_from(FLOAT_DTYPES)
thresholds = st.one_of(st.just(0.0), st.just(-1.0), st.floats(0.5, 10.0))
scales = st.sampled_from([1e-3, 0.1, 1.0, 3.0, 30.0, 1e3])


@st.composite
def activations(draw, max_m=40):
    M = draw(st.integers(0, max_m))
    K = draw(dims)
    dtype = draw(dtypes)
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(scales)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g) * scale
    pattern = draw(st.sampled_from(["none", "few_columns", "all_columns", "exact_threshold", "zero_rows"]))
    if M and pattern == "few_columns":
        cols = torch.randperm(K, generator=g)[: max(1, K // 50)]
        x[:, cols] *= 20
    elif M and pattern == "all_columns":
        x = x.abs() + 20
    elif M and pattern == "exact_threshold":
        x[0, 0] = 6.0
    elif M and pattern == "zero_rows":
        x[:: max(1, M // 3)] = 0
    if dtype == torch.float16:
        x = x.clamp(-6e4, 6e4)  # stay finite; non-finite inputs have their own tests
    return x.to(dtype)


def _to(t, device):
    return None if t is None else t.to(device)


@pytest.mark.parametrize("device", DEVICES)
@given(x=activations(), threshold=thresholds)
def test_quantize_rowwise_property(device, x, threshold):
    with on_device(device) as device:
        q, absmax, cols = ops.quantize_rowwise(x.to(device), threshold)
        q_r, absmax_r, cols_r = ref.quantize_rowwise(x, threshold)
        assert torch.equal(cols.cpu(), cols_r)
        assert torch.equal(absmax.cpu(), absmax_r)
        if q.numel():
            assert (q.cpu().int() - q_r.int()).abs().max() <= 1
            assert q.abs().max() <= 127


@pytest.mark.parametrize("device", DEVICES)
@given(M=st.integers(0, 40), K=dims, N=st.integers(1, 40), seed=st.integers(0, 2**31 - 1),
       low=st.sampled_from([-128, -127, 0]))
def test_int8_matmul_property(device, M, K, N, seed, low):
    with on_device(device) as device:
        g = torch.Generator().manual_seed(seed)
        a = torch.randint(low, 128, (M, K), generator=g, dtype=torch.int8)
        b = torch.randint(low, 128, (N, K), generator=g, dtype=torch.int8)
        assert torch.equal(ops.int8_matmul(a.to(device), b.to(device)).cpu(), ref.int8_matmul(a, b))


@st.composite
def epilogue_case(draw):
    M, N, K = draw(st.integers(0, 30)), draw(st.integers(1, 30)), draw(dims)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    a = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
    b = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    row = torch.rand(M, generator=g) * draw(scales)
    col = torch.rand(N, generator=g) * draw(scales)
    out_dtype = draw(dtypes)
    bias = (torch.randn(N, generator=g) * 3).to(draw(dtypes)) if draw(st.booleans()) else None
    add = (torch.randn(M, N, generator=g) * 3).to(draw(st.sampled_from([out_dtype, torch.float32]))) if draw(st.booleans()) else None
    return a, b, row, col, bias, add, out_dtype


def _f64(acc, row, col, bias, add):
    out = acc.double() * (row.double()[:, None] / 127) * (col.double()[None, :] / 127)
    if bias is not None:
        out = out + bias.double()
    return out + add.double() if add is not None else out


@pytest.mark.parametrize("device", DEVICES)
@given(case=epilogue_case())
def test_dequantize_matmul_property(device, case):
    with on_device(device) as device:
        a, b, row, col, bias, add, out_dtype = case
        acc = ref.int8_matmul(a, b)
        out = ops.dequantize_matmul(acc.to(device), row.to(device), col.to(device), _to(bias, device), _to(add, device), out_dtype)
        assert_close_to_f64(out.cpu(), ref.dequantize_matmul(acc, row, col, bias, add, out_dtype), _f64(acc, row, col, bias, add))


@pytest.mark.parametrize("device", DEVICES)
@given(case=epilogue_case())
def test_int8_scaled_matmul_property(device, case):
    with on_device(device) as device:
        a, b, row, col, bias, add, out_dtype = case
        out = ops.int8_scaled_matmul(a.to(device), b.to(device), row.to(device), col.to(device), _to(bias, device),
                                     _to(add, device), out_dtype)
        acc = ref.int8_matmul(a, b)
        assert_close_to_f64(out.cpu(), ref.int8_scaled_matmul(a, b, row, col, bias, add, out_dtype), _f64(acc, row, col, bias, add))


@pytest.mark.parametrize("device", DEVICES)
@given(x=activations(max_m=24), N=st.integers(1, 24), threshold=thresholds, seed=st.integers(0, 2**31 - 1),
       with_bias=st.booleans())
def test_int8_linear_property(device, x, N, threshold, seed, with_bias):
    with on_device(device) as device:
        K = x.shape[1]
        g = torch.Generator().manual_seed(seed)
        weight, absmax = ref.quantize_weight(torch.randn(N, K, generator=g) * 0.1)
        bias = (torch.randn(N, generator=g)).to(x.dtype) if with_bias else None
        y = ops.int8_linear(x.to(device), weight.to(device), absmax.to(device), _to(bias, device), threshold)
        y_ref = ref.int8_linear(x, weight, absmax, bias, threshold)
        w = weight.double() * (absmax.double()[:, None] / 127)
        f64 = x.double() @ w.T + (bias.double() if bias is not None else 0)
        assert_close_to_f64(y.cpu(), y_ref, f64, atol=1e-4)
