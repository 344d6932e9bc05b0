"""Pure-PyTorch versions of every int8kern op: the specification the kernels are held to.

Same names and signatures as `int8kern.ops`. Depends on torch alone. Floating-point work is
done in float32 in the same order as the kernels, so float32 results can match bit for bit;
int32 results are exact (computed in float64, which holds every such sum exactly, and
converted).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = [
    "quantize_rowwise",
    "int8_matmul",
    "dequantize_matmul",
    "int8_scaled_matmul",
    "int8_linear",
    "outlier_product",
    "quantize_weight",
    "decode_attention",
]


def _check_threshold(threshold: float) -> None:
    # |x| is compared with threshold in float32, where a positive double below half the
    # smallest denormal is 0 (every column an outlier here, none in a kernel comparing with a
    # float): refused, as the kernels refuse it.
    if threshold > 0 and torch.tensor(threshold, dtype=torch.float32).item() == 0.0:
        raise ValueError(
            "quantize_rowwise: threshold must be <= 0 (no outliers) or at least the smallest "
            f"positive float32 (1.4e-45; the kernels compare in float32), got {threshold}"
        )


def quantize_rowwise(x: torch.Tensor, threshold: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise absmax int8 quantization with outlier columns (bitsandbytes' semantics).

    threshold <= 0: row_absmax[i] = max_j |x[i, j]|, no outlier columns.
    threshold > 0: column j is an outlier column iff some |x[i, j]| >= threshold;
    row_absmax[i] is the max of |x[i, j]| over elements with |x[i, j]| < threshold, and
    q[:, outlier_cols] = 0.
    q = round_half_even(x * (127 / row_absmax)) clamped to [-127, 127]; 0 in a row whose absmax
    is 0.

    Non-finite values: NaN and +-Inf are never outliers (an Inf would otherwise pull its whole
    column out of every other row). They stay in their row, whose absmax becomes NaN or Inf;
    that row's q is 0 (int8 holds no NaN) and its dequantized output is NaN, while every other
    row is exactly what it would be without them.
    """
    if x.dim() != 2:
        raise ValueError(f"quantize_rowwise: x must be 2-D [M, K], got {tuple(x.shape)}")
    _check_threshold(threshold)
    xf = x.float()
    a = xf.abs()
    if threshold > 0:
        outlier = (a >= threshold) & torch.isfinite(a)
        outlier_cols = outlier.any(dim=0).nonzero().flatten()
        kept = a.masked_fill(outlier, 0.0)
    else:
        outlier_cols = torch.empty(0, dtype=torch.long, device=x.device)
        kept = a
    # amax propagates NaN (NaN is not an outlier, so it is in `kept`); max over an empty row is 0.
    row_absmax = kept.amax(dim=1) if x.shape[1] > 0 else torch.zeros(x.shape[0], device=x.device)
    # A true division, as the kernels do (`127.0 / tensor` would multiply by a reciprocal and
    # round differently in the last bit).
    scale = torch.full_like(row_absmax, 127.0) / row_absmax
    scale = torch.where(row_absmax > 0, scale, torch.zeros_like(row_absmax))
    q = torch.round(xf * scale[:, None]).clamp(-127, 127).nan_to_num(nan=0.0).to(torch.int8)
    if outlier_cols.numel() > 0:
        q[:, outlier_cols] = 0
    return q, row_absmax.float(), outlier_cols


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T for int8 a [M, K] and int8 b [N, K], exactly, as int32 [M, N]."""
    return (a.double() @ b.double().T).to(torch.int32)


def dequantize_matmul(
    acc: torch.Tensor,
    row_absmax: torch.Tensor,
    col_absmax: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    add: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """acc * (row_absmax[:, None] / 127) * (col_absmax / 127) + bias + add in float32, rounded once."""
    # True divisions by 127 (on CUDA, `tensor / 127.0` multiplies by a rounded 1/127), as the
    # kernels do, so that float32 results can match bit for bit.
    row_scale = row_absmax.float() / torch.full_like(row_absmax.float(), 127.0)
    col_scale = col_absmax.float() / torch.full_like(col_absmax.float(), 127.0)
    out = acc.float() * row_scale[:, None] * col_scale[None, :]
    if bias is not None:
        out = out + bias.float()[None, :]
    if add is not None:
        out = out + add.float()
    return out.to(out_dtype)


def int8_scaled_matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    row_absmax: torch.Tensor,
    col_absmax: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    add: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """dequantize_matmul(int8_matmul(a, b), ...)."""
    return dequantize_matmul(int8_matmul(a, b), row_absmax, col_absmax, bias, add, out_dtype)


def outlier_product(x_out: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    """LLM.int8()'s 16-bit half: x_out [M, n] @ w_out [N, n].T, in x_out's dtype, by one rule
    that every backend follows bit for bit (CPU, CUDA, the emulated CUDA):

        add[i, j] = dtype(float32(sum over c = 0, 1, ..., n-1 of double(x_out[i, c]) * double(w_out[j, c])))

    each product exact in float64 (two values of at most 24 significant bits), the sum taken in
    float64 in ascending column order (one rounding per addition, starting from 0), rounded to
    float32 and then to the dtype (torch's float64 -> float16/bfloat16 conversion also goes
    through float32). int8_linear adds it in float32 after the bias, as dequantize_matmul adds
    `add`. A 16-bit matmul would instead round every partial sum to an order that differs
    between libraries and devices.
    """
    xd, wd = x_out.double(), w_out.double()
    acc = torch.zeros(xd.shape[0], wd.shape[0], dtype=torch.float64, device=x_out.device)
    for c in range(xd.shape[1]):
        acc += xd[:, c, None] * wd[None, :, c]
    return acc.float().to(x_out.dtype)


def int8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_absmax: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    threshold: float = 6.0,
) -> torch.Tensor:
    """The LLM.int8() forward: y = x @ dequant(weight).T + bias, with outlier columns of x
    (|x| >= threshold anywhere in the column) multiplied in x's dtype."""
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    q, row_absmax, cols = quantize_rowwise(x2, threshold)
    add = None
    if cols.numel() > 0:
        w_scale = weight_absmax / torch.full_like(weight_absmax, 127.0)
        w_outliers = (weight[:, cols].float() * w_scale[:, None]).to(x.dtype)
        add = outlier_product(x2[:, cols], w_outliers)
    y = int8_scaled_matmul(q, weight, row_absmax, weight_absmax, bias, add, x.dtype)
    return y.reshape(*x.shape[:-1], weight.shape[0])


def quantize_weight(weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-output-row absmax quantization of a float weight [N, K]: (int8 [N, K], float32 [N])."""
    q, absmax, _ = quantize_rowwise(weight.detach(), 0.0)
    return q, absmax


def decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Attention of one query position per head over a KV cache, grouped-query.

    query [B, Hq, 1, D], key/value [B, Hkv, S, D]; query head h uses KV head h // (Hq // Hkv).
    Scores (float32(query) * scale, rounded to float32) @ key.T, then softmax and the weighted
    sum of value rows in float64, over the positions where attn_mask ([B or 1, 1, 1, S] bool)
    is True; a query with no such position gives 0; the result is rounded to query's dtype.
    The kernel sums in float32 in its own order: it matches this to float32 rounding, not bit
    for bit.
    """
    if scale is None:
        scale = query.size(-1) ** -0.5
    B, Hq, _, D = query.shape
    G = Hq // key.size(1)
    q = (query.float() * scale).double()
    k = key.double().repeat_interleave(G, dim=1)
    v = value.double().repeat_interleave(G, dim=1)
    s = q @ k.transpose(-1, -2)  # [B, Hq, 1, S]
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf"))
        v = v.masked_fill(~attn_mask.transpose(-1, -2), 0.0)  # hidden rows count for nothing, NaN or not
    live = torch.isfinite(s).any(-1, keepdim=True) | torch.isnan(s).any(-1, keepdim=True)
    p = torch.softmax(s, dim=-1)
    out = torch.where(live, p @ v, torch.zeros((), dtype=torch.float64))
    return out.to(query.dtype)
