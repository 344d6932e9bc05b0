"""Checks that only mean something on a GPU, written for the first runs on an H100/H200
(issue 10, part 2): a fresh process whose very first wgmma call is inside a CUDA-graph capture,
single rows whose stride is not K, split-K under many repeats, float32 outliers with TF32
allowed. Each skips with the reason where there is no CUDA GPU (or no sm_90 for wgmma)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from int8kern import ops, reference as ref

from conftest import randint8, randn

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_sm90():
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@pytest.mark.skipif(not _is_sm90(), reason="wgmma kernel needs an sm_90 GPU (H100/H200)")
@pytest.mark.parametrize("M", [8, 512])  # 8: decode plan (mma.sync); 512: plain tiled (wgmma)
def test_first_wgmma_call_inside_graph_capture(M):
    # A fresh process: the wgmma kernel's one-time preparation (attributes, shared-memory
    # opt-in, the driver's tensor-map entry point) then happens during the capture itself.
    code = textwrap.dedent(f"""
        import os, torch
        os.environ["INT8KERN_CUDA_GEMM"] = "wgmma"
        import int8kern
        from int8kern import ops, reference as ref
        g = torch.Generator().manual_seed(0)
        x = (torch.randn({M}, 4096, generator=g) * 2).half().cuda()
        x[:, 7] *= 10  # outlier columns
        w, absmax = ref.quantize_weight(torch.randn(4096, 4096, generator=g).cuda())
        stream = torch.cuda.Stream()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
            y = ops.int8_linear(x, w, absmax, None, 6.0)
        graph.replay()
        torch.cuda.synchronize()
        eager = ops.int8_linear(x, w, absmax, None, 6.0)
        assert torch.equal(y.view(torch.int16), eager.view(torch.int16)), "replay != eager"
        x.copy_(x.flip(0))  # new inputs, same graph
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y.view(torch.int16), ops.int8_linear(x, w, absmax, None, 6.0).view(torch.int16))
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr


@pytest.mark.parametrize("gemm", ["mma", "wgmma"])
def test_single_row_with_any_stride(monkeypatch, gemm):
    # A [1, K] view keeps its row stride through .contiguous(): 8192 here, 1 for a transposed
    # column. The kernels are given K (single row), so every path reads it right.
    monkeypatch.setenv("INT8KERN_CUDA_GEMM", gemm)
    big = randint8((8, 8192), "cuda", seed=1)
    b = randint8((4096, 4096), "cuda", seed=2)
    for a in (big[3:4, :4096], randint8((4096, 1), "cuda", seed=3).T):
        assert a.shape == (1, 4096)
        assert torch.equal(ops.int8_matmul(a, b), ref.int8_matmul(a.contiguous().clone(), b))
    x = randn((4096, 1), torch.float16, "cuda", seed=4, scale=3).T
    w, absmax = ref.quantize_weight(randn((4096, 4096), torch.float32, "cuda", seed=5))
    want = ops.int8_linear(x.contiguous().clone(), w, absmax, None, 6.0)
    assert torch.equal(ops.int8_linear(x, w, absmax, None, 6.0).view(torch.int16), want.view(torch.int16))


@pytest.mark.parametrize("M,K,N", [(1, 4096, 4096), (16, 40000, 200)])
def test_split_k_bit_for_bit_under_repetition(M, K, N):
    # Split-K sums partial products with atomics and a last-arriving block: any race in the
    # arrival protocol shows up as a rare wrong tile. 10,000 launches, every one compared.
    a, b = randint8((M, K), "cuda", seed=6), randint8((N, K), "cuda", seed=7)
    want = ref.int8_matmul(a.cpu(), b.cpu()).cuda()
    bad = torch.zeros((), dtype=torch.int64, device="cuda")
    for _ in range(10_000):
        bad += (ops.int8_matmul(a, b) != want).sum()
    assert bad.item() == 0


@pytest.mark.parametrize("n_outliers", [3, 200])
def test_float32_outliers_ignore_tf32(n_outliers):
    """The outlier product is summed in float64 in the GEMM epilogue, whatever torch's TF32 switch
    says (TF32 would drop 13 mantissa bits of the large terms): bit for bit the reference."""
    x = randn((64, 1024), torch.float32, "cuda", seed=8)
    cols = torch.randperm(1024, generator=torch.Generator().manual_seed(9))[:n_outliers]
    x[:, cols.cuda()] *= 50
    w, absmax = ref.quantize_weight(randn((512, 1024), torch.float32, "cuda", seed=10))
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        y = ops.int8_linear(x, w, absmax, None, 6.0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    want = ref.int8_linear(x.cpu(), w.cpu(), absmax.cpu(), None, 6.0)
    _, _, out_cols = ref.quantize_rowwise(x.cpu(), 6.0)
    assert out_cols.numel() == n_outliers
    assert torch.equal(y.cpu(), want)
