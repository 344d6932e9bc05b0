"""Checks that only mean something on a GPU, written for the first runs on an H100/H200
(issue 10, part 2): a fresh process whose very first wgmma call is inside a CUDA-graph capture,
single rows whose stride is not K, split-K under many repeats, float32 outliers with TF32
allowed, launches counted by the CUDA profiler (issue 18). Each skips with the reason where there is no
CUDA GPU (or no sm_90 for wgmma)."""
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


def _cuda_work(fn):
    """(kernel names, memsets) the CUDA profiler sees while fn() runs: what the emulator counts."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # the stream's workspaces and cuBLAS handles exist before the count
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    memsets = sum(n.lower().startswith("memset") for n in names)
    kernels = [n for n in names if not n.lower().startswith(("memset", "memcpy"))]
    return kernels, memsets


@pytest.mark.parametrize("M,K,N", [(1, 4096, 4096), (16, 4096, 4096), (17, 1024, 1024), (512, 512, 512)])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_int8_linear_launches_counted_by_the_profiler(M, K, N, threshold):
    """The counts tests/test_emu_profile.py asserts under the emulator, on the GPU: two kernels per
    int8_linear call (three above 64 rows at threshold 6), no memset."""
    x = randn((M, K), torch.float16, "cuda", seed=M)
    x[:, :: max(1, K // 8)] *= 8.0
    w, absmax = ref.quantize_weight(randn((N, K), torch.float32, "cuda", seed=1, scale=0.05))
    kernels, memsets = _cuda_work(lambda: ops.int8_linear(x, w, absmax, None, threshold))
    assert (len(kernels), memsets) == (3 if threshold > 0 and M > 64 else 2, 0), kernels


def test_decode_launches_per_token_against_fp16():
    """One decode step of a Llama-shaped model: int8kern's linear layers launch two kernels each
    and no memset, and the whole step launches no more than fp16's plus one per linear layer
    (fp16 nn.Linear: one cuBLAS GEMM each, or two where cuBLAS splits K)."""
    transformers = pytest.importorskip("transformers")
    import int8kern

    cfg = transformers.LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=300)
    torch.manual_seed(5)
    fp16 = transformers.LlamaForCausalLM(cfg).eval().half().cuda()
    ours = int8kern.quantize_model(transformers.LlamaForCausalLM(cfg).eval().half().cuda(), threshold=6.0)
    n_linear = sum(isinstance(m, int8kern.Int8LinearLt) for m in ours.modules())
    ids = torch.randint(0, 300, (1, 6), device="cuda")
    kernels, memsets = {}, {}
    for name, model in (("fp16", fp16), ("int8kern", ours)):
        with torch.no_grad():
            cache = model(ids, use_cache=True).cache
            kernels[name], memsets[name] = _cuda_work(lambda: model(ids[:, -1:], cache=cache, use_cache=True))
    ours_kernels = [k for k in kernels["int8kern"] if "int8kern" in k]
    print(f"decode step, {n_linear} linear layers: fp16 {len(kernels['fp16'])} launches, "
          f"int8kern {len(kernels['int8kern'])} ({len(ours_kernels)} of them int8kern's)")
    assert len(ours_kernels) == 2 * n_linear and memsets["int8kern"] == memsets["fp16"], (ours_kernels, memsets)
    assert len(kernels["int8kern"]) <= len(kernels["fp16"]) + n_linear, kernels
