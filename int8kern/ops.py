"""The int8kern ops: documented wrappers over torch.ops.int8kern.*, and their fake (meta)
implementations for torch.compile and torch.library.opcheck.

Every op accepts non-contiguous inputs (they are made contiguous inside) and tensors on one
device; anything else is refused with a RuntimeError that names the op and the argument.
`int8kern.reference` holds the pure-PyTorch specification of each op.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import _C  # loads the extension, which registers torch.ops.int8kern.*

__all__ = [
    "quantize_rowwise",
    "int8_matmul",
    "dequantize_matmul",
    "int8_scaled_matmul",
    "int8_linear",
]

_ops = torch.ops.int8kern

#: Outlier columns the CUDA int8_linear multiplies on its fast path, a fixed-shape cuBLAS
#: product that needs no host synchronisation (CUDA-graph capturable). More outlier columns are
#: still handled, correctly and without a sync, by a slower spill kernel. Read from the
#: extension (C++: csrc/outlier_capacity.h) so that the number lives in one place.
OUTLIER_CAPACITY: int = _C.OUTLIER_CAPACITY


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
    captured in a CUDA graph: the outlier count stays on the device, up to OUTLIER_CAPACITY
    outlier columns go through a fixed-shape cuBLAS product, and more through a slower kernel.
    """
    return _ops.int8_linear(x, weight, weight_absmax, bias, float(threshold))


# ---- fake (meta) implementations: shapes and dtypes only, checks mirror the C++ ones ----

def _check(cond: bool, msg: str) -> None:
    torch._check(cond, lambda: msg)


@torch.library.register_fake("int8kern::quantize_rowwise")
def _(x, threshold):
    _check(x.dim() == 2, f"int8kern.quantize_rowwise: x must be 2-D [M, K], got {tuple(x.shape)}")
    M, K = x.shape
    n_out = torch.library.get_ctx().new_dynamic_size() if threshold > 0 else 0
    return (
        x.new_empty((M, K), dtype=torch.int8),
        x.new_empty((M,), dtype=torch.float32),
        x.new_empty((n_out,), dtype=torch.int64),
    )


def _check_int8_operands(op, a, b):
    _check(a.dtype == torch.int8 and a.dim() == 2, f"int8kern.{op}: a must be int8 [M, K], got {a.dtype} {tuple(a.shape)}")
    _check(b.dtype == torch.int8 and b.dim() == 2, f"int8kern.{op}: b must be int8 [N, K], got {b.dtype} {tuple(b.shape)}")
    _check(a.shape[1] == b.shape[1], f"int8kern.{op}: b must be [N, K] with K = {a.shape[1]}, got {tuple(b.shape)}")


@torch.library.register_fake("int8kern::int8_matmul")
def _(a, b):
    _check_int8_operands("int8_matmul", a, b)
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.int32)


@torch.library.register_fake("int8kern::dequantize_matmul")
def _(acc, row_absmax, col_absmax, bias, add, out_dtype):
    _check(acc.dim() == 2, f"int8kern.dequantize_matmul: acc must be int32 [M, N], got {tuple(acc.shape)}")
    return acc.new_empty(acc.shape, dtype=out_dtype)


@torch.library.register_fake("int8kern::int8_scaled_matmul")
def _(a, b, row_absmax, col_absmax, bias, add, out_dtype):
    _check_int8_operands("int8_scaled_matmul", a, b)
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


@torch.library.register_fake("int8kern::int8_linear")
def _(x, weight, weight_absmax, bias, threshold):
    _check(x.dim() >= 1 and weight.dim() == 2 and x.shape[-1] == weight.shape[1],
           f"int8kern.int8_linear: weight must be int8 [N, K] with K = x.shape[-1], got x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


# ---- autograd: gradients for x and bias (the int8 weight is frozen) ----

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


torch.library.register_autograd(
    "int8kern::int8_linear", _int8_linear_backward, setup_context=_int8_linear_setup_context
)
