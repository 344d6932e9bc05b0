"""Non-finite values, edge cases, serialization, tied weights, threads, streams, CUDA graphs."""
import contextlib
import io
import threading
import types

import pytest
import torch
from torch import nn

import int8kern
from int8kern import Int8LinearLt, ops, quantize_model, reference as ref

from conftest import DEVICES, FLOAT_DTYPES, assert_close_to_f64, gen, linear_f64, on_device, randn

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# The CUDA kernels: on a GPU, and under the emulator (int8kern.emu, CPU tensors).
CUDA_KERNELS = [d for d in DEVICES if d != "cpu"]


# ---------------------------------------------------------------- non-finite values

@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_row_is_nonfinite_others_unchanged(device, dtype, threshold, bad):
    K, N = 96, 40
    x = randn((6, K), dtype, device, seed=1)
    x[:, 10] *= 9  # an outlier column, so the 6.0 path is exercised
    w, absmax = ref.quantize_weight(randn((N, K), torch.float32, device, seed=2, scale=0.1))
    bias = randn((N,), dtype, device, seed=3)
    clean = ops.int8_linear(x, w, absmax, bias, threshold)
    x_bad = x.clone()
    x_bad[2, 30] = bad
    y = ops.int8_linear(x_bad, w, absmax, bias, threshold)
    assert not torch.isfinite(y[2]).any(), "the row holding a NaN/Inf must not come out finite"
    others = [0, 1, 3, 4, 5]
    assert torch.equal(y[others], clean[others]), "other rows must be exactly as without the NaN/Inf"
    q, row_absmax, cols = ops.quantize_rowwise(x_bad, threshold)
    assert not torch.isfinite(row_absmax[2])
    assert 30 not in cols.tolist()  # never an outlier column


# ---------------------------------------------------------------- edge cases with defined results

def test_every_column_an_outlier(device):
    x = randn((5, 33), torch.float32, device, seed=4).abs() + 7
    w, absmax = ref.quantize_weight(randn((9, 33), torch.float32, device, seed=5))
    q, row_absmax, cols = ops.quantize_rowwise(x, 6.0)
    assert cols.tolist() == list(range(33)) and (q == 0).all() and (row_absmax == 0).all()
    y = ops.int8_linear(x, w, absmax, None, 6.0)
    w_deq = w.float() * (absmax[:, None] / 127)
    torch.testing.assert_close(y, x @ w_deq.T, rtol=1e-5, atol=1e-5)  # all in 16/32-bit


@pytest.mark.parametrize("K,N", [(1, 1), (1, 7), (5, 1)])
def test_tiny_dims(device, K, N):
    x = randn((3, K), torch.float32, device, seed=6)
    w, absmax = ref.quantize_weight(randn((N, K), torch.float32, device, seed=7))
    torch.testing.assert_close(ops.int8_linear(x, w, absmax, None, 6.0), ref.int8_linear(x, w, absmax, None, 6.0))


def test_largest_float16_and_bfloat16_ranges(device):
    x = torch.tensor([[65504.0, -65504.0, 1.0, 0.5]], dtype=torch.float16, device=device)
    q, a, _ = ops.quantize_rowwise(x, 0.0)
    assert q.tolist() == [[127, -127, 0, 0]] and a.item() == 65504.0
    xb = torch.tensor([[3.0e38, -1.0e38, 1.0e-38]], dtype=torch.bfloat16, device=device)
    qb, ab, _ = ops.quantize_rowwise(xb, 0.0)
    assert torch.isfinite(ab).all() and qb[0, 0].item() == 127
    assert torch.equal(qb.cpu(), ref.quantize_rowwise(xb.cpu(), 0.0)[0])


# ---------------------------------------------------------------- serialization

def _small_model(device):
    torch.manual_seed(8)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32, bias=False)).to(device)


def test_safetensors_round_trip_bit_exact(device, tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    model = quantize_model(_small_model(device))
    x = randn((7, 64), torch.float32, device, seed=9, scale=3)
    path = tmp_path / "m.safetensors"
    safetensors.save_file(model.state_dict(), str(path))
    fresh = quantize_model(nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32, bias=False)).to(device))
    fresh.load_state_dict(safetensors.load_file(str(path), device=device))
    assert torch.equal(fresh(x), model(x))


def test_torch_save_whole_model(device):
    model = quantize_model(_small_model(device))
    x = randn((7, 64), torch.float32, device, seed=10, scale=3)
    buf = io.BytesIO()
    torch.save(model, buf)
    loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    assert isinstance(loaded[0], Int8LinearLt)
    assert torch.equal(loaded(x), model(x))


def test_tied_weights_survive(device, tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
                                   tie_word_embeddings=True)
    torch.manual_seed(11)
    model = transformers.LlamaForCausalLM(cfg).to(device).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    # Even with lm_head not skipped, the tied layer stays float (a quantized copy would untie it).
    quantize_model(model, skip_modules=())
    assert isinstance(model.lm_head, nn.Linear) and model.lm_head.weight is model.model.embed_tokens.weight
    assert isinstance(model.model.layers[0].mlp.up_proj, Int8LinearLt)
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(12)).to(device)
    with torch.no_grad():
        logits = model(ids).logits
    model.save_pretrained(tmp_path, safe_serialization=True)
    fresh = quantize_model(transformers.LlamaForCausalLM(cfg).to(device).eval(), skip_modules=())
    fresh.load_state_dict(model.state_dict())
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, logits)


@needs_cuda
def test_cpu_cuda_cpu_moves_keep_outputs():
    model = quantize_model(_small_model("cpu"))
    x = randn((5, 64), torch.float32, "cpu", seed=13, scale=3)
    before = model(x)
    model.cuda()
    torch.testing.assert_close(model(x.cuda()).cpu(), before, rtol=1e-5, atol=1e-5)
    model.cpu()
    assert torch.equal(model(x), before)


# ---------------------------------------------------------------- concurrency, streams, graphs

def test_threads_match_serial(device):
    w, absmax = ref.quantize_weight(randn((130, 257), torch.float32, device, seed=14))
    xs = [randn((9, 257), torch.float16, device, seed=20 + i, scale=3) for i in range(8)]
    serial = [ops.int8_linear(x, w, absmax, None, 6.0) for x in xs]
    results = [None] * len(xs)

    def work(i):
        for _ in range(5):
            results[i] = ops.int8_linear(xs[i], w, absmax, None, 6.0)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if device == "cuda":
        torch.cuda.synchronize()
    for got, want in zip(results, serial):
        assert torch.equal(got, want)


@needs_cuda
def test_non_default_stream():
    w, absmax = ref.quantize_weight(randn((64, 200), torch.float32, "cuda", seed=15))
    x = randn((33, 200), torch.bfloat16, "cuda", seed=16, scale=3)
    want = ops.int8_linear(x, w, absmax, None, 6.0)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        got = ops.int8_linear(x, w, absmax, None, 6.0)
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(got, want)


def _x_with_outliers(shape, dtype, seed, outlier_cols, device="cuda"):
    """Standard normal x on `device` (|x| >= 6 has probability 2e-9: no outliers of its own) plus,
    in each listed column, one entry of magnitude 8..20 in a row and with a sign picked by the
    seed: with threshold 6 the outlier columns are exactly `outlier_cols`."""
    x = randn(shape, torch.float32, "cpu", seed=seed)
    cols = torch.as_tensor(list(outlier_cols), dtype=torch.long)
    if cols.numel():
        g = gen(seed + 1000)
        rows = torch.randint(0, shape[0], (cols.numel(),), generator=g)
        sign = torch.where(torch.rand(cols.numel(), generator=g) < 0.5, -1.0, 1.0)
        x[rows, cols] = sign * (8 + 12 * torch.rand(cols.numel(), generator=g))
    return x.to(dtype=dtype, device=device)


# Outlier column counts around 128, the fixed capacity of the CUDA outlier path before its
# product moved into the GEMM epilogue (with a spill kernel past it): the counts straddle it.
MANY_OUTLIERS = 128


def _outlier_cases(K):
    """(seed, outlier columns) for K >= 2 * (MANY_OUTLIERS + 37): a few, none, 128, 129, 165, the
    two ends, and every column."""
    cap = MANY_OUTLIERS
    spread = list(range(0, K, 2))
    return [(19, [3, 50, 51]), (20, []), (24, spread[:cap]), (25, spread[:cap + 1]),
            (26, spread[:cap + 37]), (27, [0, K - 1]), (28, range(K))]


@contextlib.contextmanager
def _captured(kernels):
    """Capture what the block launches (a torch.cuda.CUDAGraph on a GPU, after the side-stream
    dance torch.cuda.graph wants; int8kern.emu.graph under the emulator); yields an object whose
    .graph.replay() runs it again."""
    holder = types.SimpleNamespace()
    if kernels == "cuda":
        holder.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(holder.graph):
            yield holder
    else:
        with int8kern.emu.graph() as g:
            holder.graph = g
            yield holder


@pytest.mark.parametrize("kernels", CUDA_KERNELS)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_cuda_graph_replay(kernels, threshold):
    """Captured once (with two outlier columns), replayed on inputs whose outlier columns differ
    every time, up to every column: nothing may depend on the count seen at capture. Every replay
    equals a fresh eager call and the reference, bit for bit. (On a GPU, torch.cuda.graph; under
    the emulator, int8kern.emu.graph records the same launches.)"""
    with on_device(kernels) as device:
        _graph_replay(kernels, device, threshold)


def _graph_replay(kernels, device, threshold):
    K = 3 * MANY_OUTLIERS + 5  # odd: the quantize kernel's scalar path, a mask tail
    M, N = 8, 64
    w, absmax = ref.quantize_weight(randn((N, K), torch.float32, device, seed=17, scale=0.05))
    bias = randn((N,), torch.float16, device, seed=29)
    static_x = _x_with_outliers((M, K), torch.float16, 18, [5, 77], device)
    if kernels == "cuda":
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            ops.int8_linear(static_x, w, absmax, bias, threshold)  # warm-up outside the graph
        torch.cuda.current_stream().wait_stream(s)
    else:
        ops.int8_linear(static_x, w, absmax, bias, threshold)  # the stream's workspace, allocated
        int8kern.emu.reset_stats()
    with _captured(kernels) as captured:
        static_y = ops.int8_linear(static_x, w, absmax, bias, threshold)
    if kernels == "cuda_emu":  # recorded, not run: nothing launched, nothing zeroed, no sync
        assert {k: int8kern.emu.stats()[k] for k in ("launches", "memsets", "host_syncs")} == \
            {"launches": 0, "memsets": 0, "host_syncs": 0}
        assert bool(static_y.isnan().all()), "the output was written before any replay"
    for seed, cols in _outlier_cases(K):
        x = _x_with_outliers((M, K), torch.float16, seed, cols, device)
        static_x.copy_(x)
        captured.graph.replay()
        eager = ops.int8_linear(x, w, absmax, bias, threshold)
        assert torch.equal(static_y, eager), f"replay vs eager, outlier columns {cols}"
        y_ref = ref.int8_linear(x.cpu(), w.cpu(), absmax.cpu(), bias.cpu(), threshold)
        assert torch.equal(static_y.cpu(), y_ref), f"replay vs reference, outlier columns {cols}"


def test_emulated_capture_refuses_a_host_sync():
    """quantize_rowwise returns its outlier columns as a tensor of their count, so it reads the
    count on the host: inside a capture that is an error, on a GPU and under the emulator."""
    if not int8kern.emu.available():
        pytest.skip("int8kern built without the CUDA emulator")
    x = randn((4, 64), torch.float16, "cpu", seed=3, scale=3)
    with int8kern.emu.backend():
        with pytest.raises(RuntimeError, match="operation not permitted when stream is capturing"):
            with int8kern.emu.graph():
                ops.quantize_rowwise(x, 6.0)
        q, _, cols = ops.quantize_rowwise(x, 6.0)  # and the emulator is usable afterwards
    assert torch.equal(cols, ref.quantize_rowwise(x, 6.0)[2])


@pytest.mark.parametrize("kernels", CUDA_KERNELS)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("n_outliers", ["few", "many"])
def test_cuda_forward_and_backward_never_sync(kernels, threshold, n_outliers):
    """torch's sync debug mode raises on any host synchronisation (.item(), nonzero(), a
    blocking copy) inside int8kern's CUDA forward and its backward; under the emulator, the
    CUDA host code counts none."""
    with on_device(kernels) as device:
        _forward_and_backward_never_sync(kernels, device, threshold, n_outliers)


def _forward_and_backward_never_sync(kernels, device, threshold, n_outliers):
    K = 3 * MANY_OUTLIERS + 5
    cols = [3, 50, 51] if n_outliers == "few" else range(0, K, 2)
    w, absmax = ref.quantize_weight(randn((40, K), torch.float32, device, seed=30, scale=0.05))
    bias = randn((40,), torch.float32, device, seed=31).requires_grad_()
    x = _x_with_outliers((10, K), torch.float32, 32, cols, device).reshape(2, 5, K).requires_grad_()
    g = randn((2, 5, 40), torch.float32, device, seed=33)
    if kernels == "cuda":
        # Warm-up: lazy initialisation (cuBLAS handles, autograd's device threads) may sync once.
        ops.int8_linear(x, w, absmax, bias, threshold).backward(g)
        x.grad = bias.grad = None
        torch.cuda.synchronize()
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            y = ops.int8_linear(x, w, absmax, bias, threshold)
            y.backward(g)
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    else:
        int8kern.emu.reset_stats()
        y = ops.int8_linear(x, w, absmax, bias, threshold)
        y.backward(g)
        assert int8kern.emu.stats()["host_syncs"] == 0
    y_ref = ref.int8_linear(x.detach().cpu(), w.cpu(), absmax.cpu(), bias.detach().cpu(), threshold)
    assert torch.equal(y.detach().cpu(), y_ref)
    assert x.grad is not None and bias.grad is not None


@pytest.mark.parametrize("kernels", CUDA_KERNELS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n_outliers", ["128", "129", "165", "every_column"])
def test_cuda_many_outlier_columns(kernels, dtype, n_outliers):
    """Any number of outlier columns, up to every column, goes through the GEMM epilogue's
    float64 outlier product: bit for bit the reference (odd M and N: partial tiles)."""
    with on_device(kernels) as device:
        _many_outlier_columns(device, dtype, n_outliers)


def _many_outlier_columns(device, dtype, n_outliers):
    cap = MANY_OUTLIERS
    M, N = 67, 129
    w_float = randn((N, 3 * cap + 5), torch.float32, device, seed=41, scale=0.05)
    bias = randn((N,), dtype, device, seed=42)
    if n_outliers == "every_column":
        K = cap + 37
        x = randn((M, K), torch.float32, device, seed=43)
        x = torch.where(x < 0, x - 7, x + 7).to(dtype)  # |x| >= 7 everywhere: int8 part all 0
    else:
        K = 3 * cap + 5
        n = int(n_outliers)
        x = _x_with_outliers((M, K), dtype, 44, range(1, K, 2)[:n], device)
    weight, absmax = ref.quantize_weight(w_float[:, :K].contiguous())
    q, _, cols = ops.quantize_rowwise(x, 6.0)
    assert cols.numel() == (K if n_outliers == "every_column" else n)
    y = ops.int8_linear(x, weight, absmax, bias, 6.0)
    y_ref = ref.int8_linear(x.cpu(), weight.cpu(), absmax.cpu(), bias.cpu(), 6.0)
    assert y.dtype == dtype and y.shape == (M, N)
    assert torch.equal(y.cpu(), y_ref)
    assert_close_to_f64(y.cpu(), y_ref, linear_f64(x, weight, absmax, bias), atol=1e-5)


@pytest.mark.parametrize("device_", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_compile_fullgraph_quantized_llama(device_):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=300)
    torch.manual_seed(21)
    model = quantize_model(transformers.LlamaForCausalLM(cfg).to(device_).eval())
    ids = torch.randint(0, 300, (1, 10), generator=torch.Generator().manual_seed(22)).to(device_)
    with torch.no_grad():
        eager = model(ids).logits
        compiled = torch.compile(model, fullgraph=True)(ids).logits
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
