"""The sm_90a wgmma int8 GEMM (csrc/cuda/gemm_wgmma.cu), selected with INT8KERN_CUDA_GEMM=wgmma.

The variable is read on every GEMM launch (not once per process), so monkeypatch.setenv switches
kernels inside this process. Each test checks through the profiler that the wgmma kernel really
ran, so a silent fallback to mma.sync cannot pass for it. H100/H200 (compute capability 9.0)
only: the kernel is sm_90a code; elsewhere the tests skip with the reason."""
import pytest
import torch

from int8kern import ops, reference as ref

from conftest import FLOAT_DTYPES, assert_close_to_f64, randint8, randn


def _is_sm90():
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not _is_sm90(), reason="wgmma kernel needs an sm_90 GPU (H100/H200)")]

WGMMA_KERNEL = "int8_gemm_wgmma_kernel"

# (M, K, N): K a multiple of 16 (TMA's 16-byte row stride for contiguous int8), odd M and N,
# K not a multiple of the 128-byte k-stage, one tile and many more tiles than SMs. All of them
# plain tiled plans on an H100/H200 (gemm_plan.cuh): wgmma takes those only.
SHAPES = [(17, 16, 1), (83, 272, 4097), (131, 272, 67), (131, 1040, 4097), (4096, 4096, 4096),
          (2048, 4096, 11008), (4097, 80, 129)]
# Plans of the split-K kernel (decode M <= 16; mid sizes with few tiles and a long K): mma.sync runs
# them even with INT8KERN_CUDA_GEMM=wgmma (128x128 tiles would leave most SMs idle and most A
# rows zero), and the split-K workspace is allocated for them alone.
SPLIT_SHAPES = [(1, 16, 1), (1, 4096, 4096), (7, 768, 5), (16, 4096, 4096), (131, 1040, 67), (37, 1024, 96)]


def mkn_ids(s):
    return "M{}K{}N{}".format(*s)


@pytest.fixture
def wgmma(monkeypatch):
    monkeypatch.setenv("INT8KERN_CUDA_GEMM", "wgmma")


def _kernels_run(fn):
    """fn's result and the names of the events it produced (its CUDA kernels among them)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        out = fn()
        torch.cuda.synchronize()
    return out, {e.name for e in prof.events()}  # host ops and device kernels alike


def _assert_wgmma_ran(names):
    assert any(WGMMA_KERNEL in n for n in names), f"the wgmma kernel did not run; kernels: {sorted(names)}"


@pytest.mark.parametrize("shape", SHAPES, ids=mkn_ids)
def test_int8_matmul_wgmma_exact(wgmma, shape):
    M, K, N = shape
    a, b = randint8((M, K), "cuda", seed=11), randint8((N, K), "cuda", seed=12)
    out, names = _kernels_run(lambda: ops.int8_matmul(a, b))
    _assert_wgmma_ran(names)
    # The reference in float64 on the GPU: every partial sum is an integer below 2^53, so
    # exact in any summation order, and fast enough for the large shapes.
    assert torch.equal(out, ref.int8_matmul(a, b))


@pytest.mark.parametrize("shape", SPLIT_SHAPES, ids=mkn_ids)
def test_split_plans_stay_on_mma(wgmma, shape):
    M, K, N = shape
    a, b = randint8((M, K), "cuda", seed=15), randint8((N, K), "cuda", seed=16)
    out, names = _kernels_run(lambda: ops.int8_matmul(a, b))
    assert not any(WGMMA_KERNEL in n for n in names), sorted(names)
    assert torch.equal(out, ref.int8_matmul(a, b))


@pytest.mark.parametrize("K", [16, 4096, 131056])
def test_int8_matmul_wgmma_extremes(wgmma, K):
    # 1100 x 1100: enough 64x64 tiles to fill the SMs, so a plain tiled plan (wgmma's) at any K.
    for va, vb in [(-128, -128), (127, -128)]:
        a = torch.full((1100, K), va, dtype=torch.int8, device="cuda")
        b = torch.full((1100, K), vb, dtype=torch.int8, device="cuda")
        out, names = _kernels_run(lambda: ops.int8_matmul(a, b))
        _assert_wgmma_ran(names)
        assert (out == va * vb * K).all()


def test_wgmma_falls_back_when_tma_cannot_read(wgmma):
    # K = 67: contiguous rows of 67 bytes are not 16-byte multiples, so the mma.sync kernel runs.
    a, b = randint8((83, 67), "cuda", seed=13), randint8((64, 67), "cuda", seed=14)
    out, names = _kernels_run(lambda: ops.int8_matmul(a, b))
    assert not any(WGMMA_KERNEL in n for n in names)
    assert torch.equal(out.cpu(), ref.int8_matmul(a.cpu(), b.cpu()))


@pytest.mark.parametrize("out_dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(17, 16, 1), (83, 768, 64), (131, 1040, 4097), (4096, 16, 64)], ids=mkn_ids)
@pytest.mark.parametrize("bias_add", ["none", "both"])
def test_int8_scaled_matmul_wgmma_matches_mma(monkeypatch, out_dtype, shape, bias_add):
    M, K, N = shape
    a, b = randint8((M, K), "cuda", seed=3, low=-127), randint8((N, K), "cuda", seed=4, low=-127)
    row = (torch.rand(M, generator=torch.Generator().manual_seed(5)) * 4 + 0.1).cuda()
    col = (torch.rand(N, generator=torch.Generator().manual_seed(6)) * 2 + 0.05).cuda()
    bias = randn((N,), torch.float32, "cuda", seed=7) if bias_add == "both" else None
    add = randn((M, N), out_dtype, "cuda", seed=8, scale=3) if bias_add == "both" else None
    monkeypatch.setenv("INT8KERN_CUDA_GEMM", "mma")
    want, names = _kernels_run(lambda: ops.int8_scaled_matmul(a, b, row, col, bias, add, out_dtype))
    assert not any(WGMMA_KERNEL in n for n in names)
    monkeypatch.setenv("INT8KERN_CUDA_GEMM", "wgmma")
    got, names = _kernels_run(lambda: ops.int8_scaled_matmul(a, b, row, col, bias, add, out_dtype))
    _assert_wgmma_ran(names)
    # Same epilogue, same float32 operations: bit for bit the mma.sync kernel's result ...
    assert torch.equal(got.view(torch.int16 if out_dtype != torch.float32 else torch.int32),
                       want.view(torch.int16 if out_dtype != torch.float32 else torch.int32))
    # ... and, like it, within the usual bound of the float64 computation.
    acc = ref.int8_matmul(a.cpu(), b.cpu())
    f64 = acc.double() * (row.double().cpu()[:, None] / 127) * (col.double().cpu()[None, :] / 127)
    if bias is not None:
        f64 = f64 + bias.double().cpu() + add.double().cpu()
    ref_out = ref.dequantize_matmul(acc, row.cpu(), col.cpu(), None if bias is None else bias.cpu(),
                                    None if add is None else add.cpu(), out_dtype)
    assert_close_to_f64(got.cpu(), ref_out, f64)


def test_int8_linear_wgmma_matches_mma(monkeypatch):
    # K = 256: a short K keeps this a plain tiled plan (K = 1024 would be split along K).
    x = randn((37, 256), torch.float16, "cuda", seed=21)
    x[:, 5] *= 20  # an outlier column: the 16-bit outlier part reaches the epilogue as `add`
    w = randn((96, 256), torch.float32, "cuda", seed=22)
    wq, w_absmax, _ = ops.quantize_rowwise(w, 0.0)
    monkeypatch.setenv("INT8KERN_CUDA_GEMM", "mma")
    want = ops.int8_linear(x, wq, w_absmax, None, 6.0)
    monkeypatch.setenv("INT8KERN_CUDA_GEMM", "wgmma")
    got, names = _kernels_run(lambda: ops.int8_linear(x, wq, w_absmax, None, 6.0))
    _assert_wgmma_ran(names)
    assert got.dtype == x.dtype and got.shape == (37, 96)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))
