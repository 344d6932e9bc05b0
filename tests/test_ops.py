"""Each op against int8kern.reference, on every device, dtype and odd shapes."""
import pytest
import torch

from int8kern import ops, reference as ref

from conftest import FLOAT_DTYPES, assert_close_to_f64, is_emulated, linear_f64, randint8, randn

# (M, K, N) sampled from M in {0, 1, 7, 83, 4096}, K in {1, 3, 16, 67, 768, 5137},
# N in {1, 5, 64, 4097}: every value appears; CPU time stays reasonable.
SHAPES = [
    (0, 67, 5), (1, 1, 1), (1, 5137, 4097), (7, 3, 64), (7, 768, 5), (83, 16, 4097),
    (83, 5137, 1), (83, 67, 64), (4096, 67, 64), (4096, 1, 5), (4096, 768, 1), (7, 5137, 64),
]
CUDA_ONLY_SHAPES = [(4096, 5137, 4097), (4096, 768, 4097)]


def shapes_for(device):
    return SHAPES + (CUDA_ONLY_SHAPES if device == "cuda" else [])


def mkn_ids(s):
    return "M{}K{}N{}".format(*s)


# ---------------------------------------------------------------- quantize_rowwise

@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("M,K", [(0, 67), (1, 1), (7, 3), (83, 16), (83, 5137), (4096, 67), (7, 768), (1, 4097)])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_quantize_rowwise(device, dtype, M, K, threshold):
    x = randn((M, K), dtype, device, seed=M * 7 + K, scale=2.5)  # ~1.6% of |x| >= 6
    q, absmax, cols = ops.quantize_rowwise(x, threshold)
    q_r, absmax_r, cols_r = ref.quantize_rowwise(x, threshold)
    assert q.dtype == torch.int8 and q.shape == (M, K)
    assert absmax.dtype == torch.float32 and absmax.shape == (M,)
    assert cols.dtype == torch.int64
    assert torch.equal(cols.cpu(), cols_r.cpu())
    assert torch.equal(absmax.cpu(), absmax_r.cpu())  # a max: exact
    assert (q.int() - q_r.int()).abs().max().item() <= 1 if q.numel() else True
    if cols.numel():
        assert (q[:, cols] == 0).all()
        assert bool((torch.diff(cols) > 0).all())
    if threshold <= 0:
        assert cols.numel() == 0


def test_quantize_outlier_semantics(device):
    x = torch.tensor([[1.0, -6.0, 0.5, 2.0], [0.25, 1.0, -3.0, 5.5]], device=device)
    q, absmax, cols = ops.quantize_rowwise(x, 6.0)
    assert cols.tolist() == [1]  # |x| >= threshold: exactly 6 is an outlier
    assert absmax.tolist() == [2.0, 5.5]  # the outlier element is left out of the absmax
    assert q[:, 1].tolist() == [0, 0]  # the whole column is zeroed, also where it is small
    assert q[0].tolist() == [64, 0, 32, 127]  # round(1 * 127/2) = round(63.5) = 64 (half to even)
    q0, absmax0, cols0 = ops.quantize_rowwise(x, 0.0)
    assert cols0.numel() == 0 and absmax0.tolist() == [6.0, 5.5]


def test_quantize_zero_rows_and_large_values(device):
    x = torch.zeros(3, 40, device=device, dtype=torch.float16)
    x[1] = 65504.0  # the largest float16
    x[2, ::3] = -65504.0
    q, absmax, cols = ops.quantize_rowwise(x, 0.0)
    assert absmax.tolist() == [0.0, 65504.0, 65504.0]
    assert (q[0] == 0).all() and (q[1] == 127).all() and (q[2, ::3] == -127).all()
    assert not torch.isnan(absmax).any()


# ---------------------------------------------------------------- int8_matmul

@pytest.mark.parametrize("shape", SHAPES + CUDA_ONLY_SHAPES, ids=mkn_ids)
def test_int8_matmul_exact(device, shape):
    if shape in CUDA_ONLY_SHAPES and device != "cuda":
        # Milliseconds on a GPU, many minutes on the CPU kernels' tests and under the emulator,
        # whose self-test runs the same plans (128x128 tiles, K tails: 1600x1600x1040,
        # 1600x1700x200, 1500x1500x33) on every CI run.
        pytest.skip("large shape: a GPU only (the emulator's self-test covers its plans at smaller sizes)")
    M, K, N = shape
    a, b = randint8((M, K), device, seed=1), randint8((N, K), device, seed=2)
    out = ops.int8_matmul(a, b)
    assert out.dtype == torch.int32 and out.shape == (M, N)
    assert torch.equal(out.cpu(), ref.int8_matmul(a.cpu(), b.cpu()))


@pytest.mark.parametrize("K", [1, 15, 16, 17, 31, 33, 64, 100, 4099])
def test_int8_matmul_extremes_exact(device, K):
    # All -128 * -128 and 127 * -128: the largest products, no saturation anywhere.
    for va, vb in [(-128, -128), (127, -128), (127, 127)]:
        a = torch.full((9, K), va, dtype=torch.int8, device=device)
        b = torch.full((5, K), vb, dtype=torch.int8, device=device)
        assert (ops.int8_matmul(a, b) == va * vb * K).all()


# ---------------------------------------------------------------- decode regime (CUDA)
# M <= 16 runs the 16-row decode tile, with split-K when K >= 1024 and the tiles alone cannot
# fill the GPU: int32 partial sums are added atomically into a per-call zeroed workspace and
# the last block of each tile applies the epilogue. Exact, so bit-identical call after call.
# Mid sizes with few 64x64 tiles (the last three) split K the same way.
DECODE_SHAPES = [(1, 4096, 4096), (1, 5137, 4097), (3, 5137, 5), (16, 4096, 4097), (16, 5137, 1),
                 (3, 67, 4097), (1, 1, 5), (16, 1024, 64), (7, 8192, 64), (16, 40000, 20),
                 (17, 5137, 5), (83, 5137, 1000), (127, 4096, 64)]


def _skip_unless_cuda(device):
    """The CUDA kernels' decode tiling and split-K, on a GPU or under the emulator."""
    if device != "cuda" and not is_emulated(device):
        pytest.skip("decode tiling and split-K: CUDA kernels only (a GPU, or the emulator)")


@pytest.mark.parametrize("shape", DECODE_SHAPES, ids=mkn_ids)
def test_decode_int8_matmul_exact_and_repeatable(device, shape):
    _skip_unless_cuda(device)
    M, K, N = shape
    a, b = randint8((M, K), device, seed=41), randint8((N, K), device, seed=42)
    first = ops.int8_matmul(a, b)
    assert torch.equal(first.cpu(), ref.int8_matmul(a.cpu(), b.cpu()))
    for _ in range(2):  # same inputs again: identical output, nothing left over from before
        assert torch.equal(ops.int8_matmul(a, b), first)
    # Strided (unaligned) operands take the byte-load path of the same tiles.
    a2 = randint8((M, K + 3), device, seed=43)[:, 1:K + 1]
    b2 = randint8((N, K + 1), device, seed=44)[:, :K]
    assert torch.equal(ops.int8_matmul(a2, b2).cpu(), ref.int8_matmul(a2.cpu(), b2.cpu()))


@pytest.mark.parametrize("shape", [(1, 4096, 4097), (3, 5137, 64), (16, 5137, 5)], ids=mkn_ids)
@pytest.mark.parametrize("out_dtype", FLOAT_DTYPES)
def test_decode_scaled_matmul_repeatable(device, shape, out_dtype):
    _skip_unless_cuda(device)
    M, K, N = shape
    a, b, row, col, bias, add = _epilogue_inputs(M, K, N, device, True, True, out_dtype)
    first = ops.int8_scaled_matmul(a, b, row, col, bias, add, out_dtype)
    acc = ref.int8_matmul(a.cpu(), b.cpu())
    want = ref.dequantize_matmul(acc, row.cpu(), col.cpu(), bias.cpu(), add.cpu(), out_dtype)
    assert_close_to_f64(first.cpu(), want, _epilogue_f64(acc, row, col, bias, add))
    # The fused epilogue runs once per element on the exact int32 sum: the same bits as
    # dequantizing the int32 result separately.
    assert torch.equal(first, ops.dequantize_matmul(ops.int8_matmul(a, b), row, col, bias, add, out_dtype))
    for _ in range(2):
        assert torch.equal(ops.int8_scaled_matmul(a, b, row, col, bias, add, out_dtype), first)


def test_decode_split_k_streams_and_graph(device):
    """Split-K decode GEMMs on two streams at once (each stream has its own cached workspace),
    then captured in a graph and replayed on new inputs (the workspace the kernel leaves zero is
    reused by every replay, with no memset). Streams: a GPU only; the graph also under the
    emulator (int8kern.emu.graph)."""
    if device == "cpu":
        pytest.skip("CUDA streams and graphs: CUDA kernels only (a GPU, or the emulator)")
    M, K, N = 1, 4096, 4096  # split-K on any GPU with >= 8 SMs
    a, b = randint8((M, K), device, seed=45), randint8((N, K), device, seed=46)
    want = ops.int8_matmul(a, b)
    static_a = a.clone()
    if device == "cuda":
        streams = [torch.cuda.Stream() for _ in range(2)]
        outs = []
        for s in streams:
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                outs.append([ops.int8_matmul(a, b) for _ in range(4)])
        for s in streams:
            torch.cuda.current_stream().wait_stream(s)
        assert all(torch.equal(o, want) for per_stream in outs for o in per_stream)
        s = streams[0]
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            ops.int8_matmul(static_a, b)  # warm-up outside the graph
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = ops.int8_matmul(static_a, b)
    else:
        import int8kern.emu
        with int8kern.emu.graph() as graph:
            static_out = ops.int8_matmul(static_a, b)
    for seed in (47, 48, 48):
        static_a.copy_(randint8((M, K), device, seed=seed))
        graph.replay()
        assert torch.equal(static_out, ops.int8_matmul(static_a, b))
        assert torch.equal(static_out.cpu(), ref.int8_matmul(static_a.cpu(), b.cpu()))


# ---------------------------------------------------------------- dequantize / scaled matmul

def _epilogue_inputs(M, K, N, device, with_bias, with_add, add_dtype):
    a, b = randint8((M, K), device, seed=3, low=-127), randint8((N, K), device, seed=4, low=-127)
    row = (torch.rand(M, generator=torch.Generator().manual_seed(5)) * 4 + 0.1).to(device)
    col = (torch.rand(N, generator=torch.Generator().manual_seed(6)) * 2 + 0.05).to(device)
    bias = randn((N,), torch.float32, device, seed=7) if with_bias else None
    add = randn((M, N), add_dtype, device, seed=8, scale=3) if with_add else None
    return a, b, row, col, bias, add


def _epilogue_f64(acc, row, col, bias, add):
    out = acc.double().cpu() * (row.double().cpu()[:, None] / 127) * (col.double().cpu()[None, :] / 127)
    if bias is not None:
        out = out + bias.double().cpu()
    if add is not None:
        out = out + add.double().cpu()
    return out


@pytest.mark.parametrize("out_dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(0, 16, 5), (1, 1, 1), (7, 67, 5), (83, 768, 64), (83, 5137, 1), (4096, 16, 64)], ids=mkn_ids)
@pytest.mark.parametrize("bias_add", ["none", "bias", "add", "both"])
def test_dequantize_and_scaled_matmul(device, out_dtype, shape, bias_add):
    M, K, N = shape
    with_bias, with_add = bias_add in ("bias", "both"), bias_add in ("add", "both")
    for add_dtype in ([out_dtype, torch.float32] if with_add else [out_dtype]):
        a, b, row, col, bias, add = _epilogue_inputs(M, K, N, device, with_bias, with_add, add_dtype)
        acc = ops.int8_matmul(a, b)
        ref_out = ref.dequantize_matmul(acc.cpu(), row.cpu(), col.cpu(),
                                        None if bias is None else bias.cpu(), None if add is None else add.cpu(), out_dtype)
        f64 = _epilogue_f64(acc, row, col, bias, add)
        deq = ops.dequantize_matmul(acc, row, col, bias, add, out_dtype)
        fused = ops.int8_scaled_matmul(a, b, row, col, bias, add, out_dtype)
        for out in (deq, fused):
            assert out.device.type == device and out.shape == (M, N)
            assert_close_to_f64(out.cpu(), ref_out, f64)


def test_bias_in_any_float_dtype(device):
    a, b, row, col, bias, _ = _epilogue_inputs(5, 32, 7, device, True, False, torch.float32)
    acc = ops.int8_matmul(a, b)
    for bdt in FLOAT_DTYPES:
        got = ops.dequantize_matmul(acc, row, col, bias.to(bdt), None, torch.float32)
        want = ref.dequantize_matmul(acc.cpu(), row.cpu(), col.cpu(), bias.to(bdt).cpu(), None, torch.float32)
        torch.testing.assert_close(got.cpu(), want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- int8_linear

@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("lead,K,N", [((0,), 67, 5), ((1,), 1, 1), ((7,), 67, 64), ((2, 3), 768, 5),
                                      ((83,), 5137, 64), ((4, 1, 5), 16, 4097)])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("with_bias", [False, True])
def test_int8_linear(device, dtype, lead, K, N, threshold, with_bias):
    x = randn((*lead, K), dtype, device, seed=K + N, scale=2.0)
    if x.numel():
        x[..., ::37] *= 5  # a few columns well past the threshold, as emergent features are
    w_float = randn((N, K), torch.float32, device, seed=11, scale=0.05)
    weight, absmax = ref.quantize_weight(w_float)
    bias = randn((N,), dtype, device, seed=12) if with_bias else None
    y = ops.int8_linear(x, weight, absmax, bias, threshold)
    y_ref = ref.int8_linear(x.cpu(), weight.cpu(), absmax.cpu(), None if bias is None else bias.cpu(), threshold)
    assert y.shape == (*lead, N) and y.dtype == dtype and y.device.type == device
    # Bit for bit on every backend (the outlier product's float64 contract, reference.outlier_product),
    # and the reference itself within LLM.int8()'s usual distance of the float64 product.
    assert torch.equal(y.cpu(), y_ref)
    assert_close_to_f64(y.cpu(), y_ref, linear_f64(x, weight, absmax, bias), atol=1e-5)


def test_int8_linear_approximates_float_linear(device):
    lin = torch.nn.Linear(512, 256).to(device)
    x = randn((16, 512), torch.float32, device, seed=21)
    x[:, 7] = 20.0  # an outlier feature
    weight, absmax = ref.quantize_weight(lin.weight.detach())
    y = ops.int8_linear(x, weight.to(device), absmax.to(device), lin.bias, 6.0)
    rel = (y - lin(x)).norm() / lin(x).norm()
    assert rel < 0.02
    # Without the outlier path the int8 error grows: the decomposition is doing its job.
    y0 = ops.int8_linear(x, weight.to(device), absmax.to(device), lin.bias, 0.0)
    assert (y0 - lin(x)).norm() > 2 * (y - lin(x)).norm()


def test_int8_linear_grads(device):
    x = randn((2, 3, 64), torch.float32, device, seed=31).requires_grad_()
    weight, absmax = ref.quantize_weight(randn((8, 64), torch.float32, device, seed=32))
    bias = randn((8,), torch.float32, device, seed=33).requires_grad_()
    g = randn((2, 3, 8), torch.float32, device, seed=34)
    ops.int8_linear(x, weight, absmax, bias, 6.0).backward(g)
    w_deq = weight.float() * absmax[:, None] / 127
    torch.testing.assert_close(x.grad, g @ w_deq)
    torch.testing.assert_close(bias.grad, g.sum((0, 1)))
