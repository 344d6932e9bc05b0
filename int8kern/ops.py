"""The int8kern ops: documented wrappers over torch.ops.int8kern.*, and their fake (meta)
implementations for torch.compile and torch.library.opcheck.

Every op accepts non-contiguous inputs (they are made contiguous inside) and tensors on one
device; anything else is refused with a RuntimeError that names the op and the argument.
`int8kern.reference` holds the pure-PyTorch specification of each op.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from . import _C  # loads the extension, which registers torch.ops.int8kern.*

__all__ = [
    "quantize_rowwise",
    "int8_matmul",
    "dequantize_matmul",
    "int8_scaled_matmul",
    "int8_linear",
    "decode_attention",
    "get_num_threads",
    "set_num_threads",
]

_ops = torch.ops.int8kern


def quantize_rowwise(x: torch.Tensor, threshold: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise absmax int8 quantization of x [M, K] (float16, bfloat16 or float32).

    Returns (q int8 [M, K], row_absmax float32 [M], outlier_cols int64 ascending). With
    threshold > 0, columns holding any |x| >= threshold are outlier columns: they are left out
    of row_absmax and zeroed in q. See `int8kern.reference.quantize_rowwise` for the exact rule.
    """
    return _ops.quantize_rowwise(x, float(threshold))


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T for int8 a [M, K] and int8 b [N, K] (nn.Linear's weight layout): exact int32 [M, N]."""
    return _ops.int8_matmul(a, b)


def dequantize_matmul(
    acc: torch.Tensor,
    row_absmax: torch.Tensor,
    col_absmax: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    add: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """acc * row_absmax[:, None] * col_absmax[None, :] / 127**2 (+ bias [N]) (+ add [M, N]),
    computed in float32 and rounded once to out_dtype."""
    return _ops.dequantize_matmul(acc, row_absmax, col_absmax, bias, add, out_dtype)


def int8_scaled_matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    row_absmax: torch.Tensor,
    col_absmax: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    add: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """dequantize_matmul(int8_matmul(a, b), ...) without the int32 matrix in memory."""
    return _ops.int8_scaled_matmul(a, b, row_absmax, col_absmax, bias, add, out_dtype)


def int8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_absmax: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    threshold: float = 6.0,
) -> torch.Tensor:
    """The LLM.int8() forward: y [..., N] = x [..., K] @ dequant(weight).T + bias, in x's dtype.

    weight: int8 [N, K], quantized per output row with scale weight_absmax (float32 [N]).
    Columns of x holding any |x| >= threshold are multiplied in x's dtype against the
    dequantized weight columns; the rest goes through the exact int8 GEMM. threshold <= 0
    is plain vector-wise int8. Differentiable with respect to x and bias (the int8 weight is
    frozen, as in bitsandbytes' Linear8bitLt with has_fp16_weights=False).

    On CUDA the forward (and the backward) never synchronises with the host, so it can be
    captured in a CUDA graph: the outlier count stays on the device. The forward is two kernel
    launches for up to 64 rows (the quantize, with the outlier bookkeeping fused; the int8 GEMM,
    whose epilogue adds the outlier product), three for more; any number of outlier columns.
    Every backend gives the same bits as `int8kern.reference.int8_linear`.
    """
    return _ops.int8_linear(x, weight, weight_absmax, bias, float(threshold))


def decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Attention of one query position per head over a KV cache (a decode step), on the CPU:
    softmax(query @ key.T * scale, masked) @ value, with grouped-query attention.

    query [B, Hq, 1, D]; key and value [B, Hkv, S, D] with Hkv dividing Hq (query head h reads
    KV head h // (Hq // Hkv), as SDPA's enable_gqa does), all of one float dtype; attn_mask
    bool [B or 1, 1, 1, S] (True: attend) or None; scale defaults to D ** -0.5. Returns
    [B, Hq, 1, D] in query's dtype, computed in float32. Positions the mask hides count for
    nothing, whatever their K and V rows hold, and are skipped 16 at a time (a static cache's
    unused tail is not read). A query that attends to no position gives 0, as torch's CPU SDPA
    does. Each K and V row is read once for all the query heads it serves, in address order:
    2-3x faster than torch's SDPA per layer on Zen 4 (benchmarks/NOTES.md, 2026-12-04). See
    `int8kern.reference.decode_attention`. Inference only: with grad mode on and an input that
    requires grad it raises (no backward), rather than return an output without a gradient.
    """
    if scale is None:
        scale = query.size(-1) ** -0.5
    return _ops.decode_attention(query, key, value, attn_mask, float(scale))


def get_num_threads() -> int:
    """Threads int8kern's CPU kernels use now (see set_num_threads)."""
    return _ops._cpu_threads()


def set_num_threads(n: int) -> None:
    """Threads for int8kern's CPU kernels from now on, apart from torch's (`torch.set_num_threads`
    sets torch's OpenMP threads). Default (n = 0 restores it): INT8KERN_NUM_THREADS if set, else
    min(torch.get_num_threads(), the CPUs this process may use: affinity and cgroup quota).

    Why apart: torch's OpenMP regions wait for every thread of the team at their end, while
    int8kern's kernels never wait for a thread the OS has not scheduled. On a shared machine, and
    for decoding a small model, torch on one thread and int8kern on two is the faster pair
    (README, "On a shared or capped CPU")."""
    _ops._set_cpu_threads(int(n))


# ---- fake (meta) implementations: shapes and dtypes only ----
# Each fake repeats its C++ kernel's checks (csrc/checks.h, csrc/int8_linear.cpp,
# csrc/cpu/*.cpp, csrc/cuda/ops_cuda.cpp) in the same order and with the same messages, so that
# torch.compile and opcheck refuse bad input exactly as eager does (tests/test_fake_checks.py
# holds the two messages equal). Messages are built lazily: torch._check calls the lambda only
# when the check fails.

#: Largest inner dimension K whose int32 accumulation is exact (kMaxK in csrc/checks.h).
MAX_K: int = 131071

# c10's names where they differ from str(torch.dtype); checks.h's dtype_name() uses the short
# names below and c10::toString() for every other dtype.
_DTYPE_NAMES = {
    torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
    torch.float64: "float64", torch.int8: "int8", torch.uint8: "uint8", torch.int16: "int16",
    torch.int32: "int32", torch.int64: "int64", torch.bool: "bool",
    torch.complex32: "ComplexHalf", torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
}
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _dtype_name(dtype: torch.dtype) -> str:
    if dtype in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype]
    name = str(dtype).removeprefix("torch.")  # c10::toString: float8_e4m3fn -> Float8_e4m3fn
    return "UInt" + name[4:] if name.startswith("uint") else name[:1].upper() + name[1:]


def _describe(t: torch.Tensor) -> str:
    """checks.h's describe(): "float16 [64, 32] on cpu"."""
    return f"{_dtype_name(t.dtype)} [{', '.join(str(s) for s in t.shape)}] on {t.device}"


def _check_arg(cond, op: str, arg: str, expected: str, t: torch.Tensor) -> None:
    torch._check(cond, lambda: f"int8kern.{op}: {arg} must be {expected}, got {_describe(t)}")


def _check_float_tensor(op, arg, t, dim, shape):
    _check_arg(t.dtype in _FLOAT_DTYPES and t.dim() == dim, op, arg, f"float16, bfloat16 or float32 {shape}", t)


def _check_tensor(op, arg, t, dtype, dim, shape):
    _check_arg(t.dtype == dtype and t.dim() == dim, op, arg, f"{_dtype_name(dtype)} {shape}", t)


def _check_size(op, arg, t, d, expected, what):
    _check_arg(t.size(d) == expected, op, arg, f"of size {expected} in dim {d} ({what})", t)


def _check_same_device(op, arg, t, ref):
    _check_arg(t.device == ref.device, op, arg, f"on the same device as the first argument ({ref.device})", t)


def _check_inner_dim(op, K):
    torch._check(1 <= K <= MAX_K, lambda: f"int8kern.{op}: the inner dimension K must be in [1, {MAX_K}] "
                 f"(int32 accumulation is exact only up to there), got K = {K}")


def _check_threshold(op, threshold):
    torch._check(threshold == threshold,
                 lambda: f"int8kern.{op}: threshold must be a number (<= 0 disables outliers), got nan")
    # The kernels compare with float(threshold); a positive double rounds to float32 0 exactly
    # when it is at most 2^-150, half the smallest denormal (the tie goes to even, 0).
    # {:g} prints a double as C++'s stream does.
    torch._check(not threshold > 0 or threshold > 2.0**-150,
                 lambda: f"int8kern.{op}: threshold must be <= 0 (no outliers) or at least the smallest positive "
                 f"float32 (1.4e-45; the kernels compare in float32), got {threshold:g}")


def _check_bias(op, bias, N, ref):
    if bias is None:
        return
    _check_float_tensor(op, "bias", bias, 1, "[N]")
    _check_size(op, "bias", bias, 0, N, "N")
    _check_same_device(op, "bias", bias, ref)


def _check_epilogue_args(op, ref, M, N, row_absmax, col_absmax, bias, add, out_dtype):
    _check_tensor(op, "row_absmax", row_absmax, torch.float32, 1, "[M]")
    _check_size(op, "row_absmax", row_absmax, 0, M, "M, one scale per row")
    _check_same_device(op, "row_absmax", row_absmax, ref)
    _check_tensor(op, "col_absmax", col_absmax, torch.float32, 1, "[N]")
    _check_size(op, "col_absmax", col_absmax, 0, N, "N, one scale per column")
    _check_same_device(op, "col_absmax", col_absmax, ref)
    _check_bias(op, bias, N, ref)
    if add is not None:
        _check_float_tensor(op, "add", add, 2, "[M, N]")
        _check_size(op, "add", add, 0, M, "M")
        _check_size(op, "add", add, 1, N, "N")
        _check_same_device(op, "add", add, ref)
    torch._check(out_dtype in _FLOAT_DTYPES, lambda: f"int8kern.{op}: out_dtype must be float16, bfloat16 or "
                 f"float32, got {_dtype_name(out_dtype)}")


def _check_int8_operands(op, a, b):
    _check_tensor(op, "a", a, torch.int8, 2, "[M, K]")
    _check_tensor(op, "b", b, torch.int8, 2, "[N, K]")
    _check_same_device(op, "b", b, a)
    _check_arg(b.size(1) == a.size(1), op, "b", f"[N, K] with K = {a.size(1)} (a's inner dimension)", b)
    _check_inner_dim(op, a.size(1))


def _fake_quantize_rowwise(x, threshold):
    op = "quantize_rowwise"
    _check_float_tensor(op, "x", x, 2, "[M, K]")
    _check_threshold(op, threshold)
    M, K = x.shape
    torch._check(K >= 1, lambda: f"int8kern.{op}: x must have at least one column (K >= 1), got {_describe(x)}")
    n_out = torch.library.get_ctx().new_dynamic_size() if threshold > 0 else 0
    return (
        x.new_empty((M, K), dtype=torch.int8),
        x.new_empty((M,), dtype=torch.float32),
        x.new_empty((n_out,), dtype=torch.int64),
    )


def _fake_int8_matmul(a, b):
    _check_int8_operands("int8_matmul", a, b)
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.int32)


def _fake_dequantize_matmul(acc, row_absmax, col_absmax, bias, add, out_dtype):
    op = "dequantize_matmul"
    _check_tensor(op, "acc", acc, torch.int32, 2, "[M, N]")
    M, N = acc.shape
    _check_epilogue_args(op, acc, M, N, row_absmax, col_absmax, bias, add, out_dtype)
    return acc.new_empty((M, N), dtype=out_dtype)


def _fake_int8_scaled_matmul(a, b, row_absmax, col_absmax, bias, add, out_dtype):
    op = "int8_scaled_matmul"
    _check_int8_operands(op, a, b)
    M, N = a.shape[0], b.shape[0]
    _check_epilogue_args(op, a, M, N, row_absmax, col_absmax, bias, add, out_dtype)
    return a.new_empty((M, N), dtype=out_dtype)


def _fake_int8_linear(x, weight, weight_absmax, bias, threshold):
    op = "int8_linear"  # csrc/int8_linear.cpp: check_int8_linear_args
    _check_arg(x.dtype in _FLOAT_DTYPES and x.dim() >= 1, op, "x", "float16, bfloat16 or float32 [..., K]", x)
    _check_tensor(op, "weight", weight, torch.int8, 2, "[N, K]")
    _check_same_device(op, "weight", weight, x)
    K, N = x.shape[-1], weight.shape[0]
    _check_arg(weight.size(1) == K, op, "weight", f"int8 [N, K] with K = {K} (x's last dimension)", weight)
    _check_inner_dim(op, K)
    _check_tensor(op, "weight_absmax", weight_absmax, torch.float32, 1, "[N]")
    _check_size(op, "weight_absmax", weight_absmax, 0, N, "N, one scale per weight row")
    _check_same_device(op, "weight_absmax", weight_absmax, x)
    _check_bias(op, bias, N, x)
    _check_threshold(op, threshold)
    return x.new_empty((*x.shape[:-1], N))


def _fake_decode_attention(query, key, value, attn_mask, scale):
    op = "decode_attention"  # csrc/cpu/attention_cpu.cpp: check_decode_attention_args
    _check_float_tensor(op, "query", query, 4, "[B, Hq, 1, D]")
    _check_arg(query.size(2) == 1, op, "query", "[B, Hq, 1, D] (one query position)", query)
    B, Hq, _, D = query.shape
    _check_arg(key.dtype == query.dtype and key.dim() == 4, op, "key",
               f"{_dtype_name(query.dtype)} [B, Hkv, S, D] (query's dtype)", key)
    _check_arg(key.size(0) == B and key.size(3) == D and key.size(1) >= 1 and Hq % key.size(1) == 0, op, "key",
               f"[B, Hkv, S, D] with B = {B}, D = {D} and Hkv dividing Hq = {Hq}", key)
    _check_same_device(op, "key", key, query)
    _check_arg(value.dtype == key.dtype and value.shape == key.shape, op, "value",
               f"of key's dtype and shape ({_describe(key)})", value)
    _check_same_device(op, "value", value, query)
    if attn_mask is not None:
        m = attn_mask
        _check_arg(m.dtype == torch.bool and m.dim() == 4 and m.size(0) in (1, B) and m.size(1) == 1
                   and m.size(2) == 1 and m.size(3) == key.size(2), op, "attn_mask",
                   f"bool [B or 1, 1, 1, S] with S = {key.size(2)}", m)
        _check_same_device(op, "attn_mask", m, query)
    torch._check(math.isfinite(scale), lambda: f"int8kern.{op}: scale must be finite, got {scale:g}")
    return torch.empty_like(query, memory_format=torch.contiguous_format)


# ---- autograd: gradients for x and bias (the int8 weight is frozen); csrc/int8_linear_autograd.cpp
# does the same in C++ for torch.ops.int8kern, this is the emulator's (int8kern_emu) ----

def _int8_linear_setup_context(ctx, inputs, output):
    _, weight, weight_absmax, bias, _ = inputs
    ctx.save_for_backward(weight, weight_absmax)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _int8_linear_backward(ctx, grad):
    weight, weight_absmax = ctx.saved_tensors
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        w = (weight.float() * (weight_absmax[:, None] / 127.0)).to(grad.dtype)
        grad_x = grad @ w
    if ctx.needs_input_grad[3]:
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0).to(ctx.bias_dtype)
    return grad_x, None, None, grad_bias, None


_FAKES = {
    "quantize_rowwise": _fake_quantize_rowwise,
    "int8_matmul": _fake_int8_matmul,
    "dequantize_matmul": _fake_dequantize_matmul,
    "int8_scaled_matmul": _fake_int8_scaled_matmul,
    "int8_linear": _fake_int8_linear,
}


def _register_python_parts(namespace: str, autograd: bool = True) -> None:
    """Fakes and autograd of the ops in `namespace`: "int8kern", and "int8kern_emu" (the emulated
    CUDA backend, int8kern.emu), whose ops share these schemas, checks and gradients.
    int8kern's own int8_linear has its autograd in C++ (csrc/int8_linear_autograd.cpp: the
    same backward, without a Python call in every forward); the emulator keeps this one."""
    for name, fake in _FAKES.items():
        torch.library.register_fake(f"{namespace}::{name}")(fake)
    if autograd:
        torch.library.register_autograd(
            f"{namespace}::int8_linear", _int8_linear_backward, setup_context=_int8_linear_setup_context
        )


_register_python_parts("int8kern", autograd=False)
torch.library.register_fake("int8kern::decode_attention")(_fake_decode_attention)  # CPU only: no emulated twin
