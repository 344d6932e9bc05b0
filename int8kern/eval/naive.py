"""Plain-PyTorch quantizers that int8kern is measured against.

* ``absmax_quantize`` / ``zeropoint_quantize``: the per-tensor int8 quantizers of the
  tutorials this project grew from (one scale, and for zero-point one offset, for a whole
  tensor), written again here so that the evaluation does not depend on notebook code.
* ``NaiveInt8Linear`` / ``quantize_model_naive``: apply them to a model's linear layers,
  weights *and* activations, the way a naive int8 deployment would. The matmul runs in
  float on the dequantized values ("fake quantization"): the error is exactly the
  quantization error, which is all the evaluation wants to show.
* ``SimLLMInt8Linear`` / ``simulate_llm_int8``: LLM.int8() (vector-wise quantization with
  outlier decomposition, Dettmers et al. 2022) in float math, with no int8kern kernel in
  the path. It mirrors int8kern's contract (int8 weights per output row, outlier columns
  multiplied by the dequantized int8 weights) so that comparing the two isolates the error
  the kernels add on their own, which should be nil.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "absmax_quantize", "zeropoint_quantize", "rowwise_quantize", "NaiveInt8Linear",
    "SimLLMInt8Linear", "quantize_model_naive", "simulate_llm_int8", "replace_linears",
]


def _absmax_params(Xf: torch.Tensor):
    """(scale, zero-point) of symmetric per-tensor int8: scale = 127 / max|X|, zero = 0."""
    amax = Xf.abs().max()
    scale = torch.where(amax > 0, 127.0 / amax, torch.ones_like(amax))  # all-zero tensor: q = 0
    return scale, torch.zeros_like(scale)


def _zeropoint_params(Xf: torch.Tensor):
    """(scale, zero-point) mapping [min, max] onto [-128, 127] with an integer offset."""
    x_range = Xf.max() - Xf.min()
    x_range = torch.where(x_range == 0, torch.ones_like(x_range), x_range)  # constant tensor
    scale = 255.0 / x_range
    return scale, torch.round(-scale * Xf.min() - 128)


def _fake_quant(X: torch.Tensor, params, lo: int):
    Xf = X.float()  # scales in float32 even for 16-bit inputs, as the kernels do
    scale, zero = params(Xf)
    X_q = torch.clamp(torch.round(Xf * scale + zero), lo, 127)
    return X_q.to(torch.int8), ((X_q - zero) / scale).to(X.dtype)


def absmax_quantize(X: torch.Tensor):
    """Symmetric per-tensor int8: X_q = round(127 / max|X| * X). Returns (X_q, X_dequant)."""
    return _fake_quant(X, _absmax_params, -127)


def zeropoint_quantize(X: torch.Tensor):
    """Asymmetric per-tensor int8: X_q = round(X * 255 / (max - min) + zero-point) in
    [-128, 127]. Returns (X_q, X_dequant)."""
    return _fake_quant(X, _zeropoint_params, -128)


_PARAMS = {"absmax": (_absmax_params, -127), "zeropoint": (_zeropoint_params, -128)}


# True divisions, as the kernels compute them: `127.0 / t` runs as 127 * (1 / t) and, on
# CUDA, `t / 127.0` as t * (1 / 127); both differ in the last bit. That bit matters: weights
# read from a GGUF file sit on a grid where w * scale often lands exactly on .5, and a
# flipped rounding of those ties alone moved SmolLM2's perplexity by 1.3%.
def _div127(absmax: torch.Tensor) -> torch.Tensor:
    return torch.full_like(absmax, 127.0) / absmax


def _over127(t: torch.Tensor) -> torch.Tensor:
    return t / torch.full_like(t, 127.0)


def rowwise_quantize(W: torch.Tensor):
    """int8kern's weight format: one absmax per output row, q = round(W * 127 / absmax).

    Returns (q int8 [out, in], absmax float32 [out])."""
    Wf = W.float()
    absmax = Wf.abs().amax(dim=1)
    scale = torch.where(absmax > 0, _div127(absmax), torch.zeros_like(absmax))  # zero rows -> 0
    q = torch.round(Wf * scale[:, None]).clamp(-127, 127)
    return q.to(torch.int8), absmax


def _weight_out_in(layer: nn.Module) -> torch.Tensor:
    """Weight as [out, in]: transformers' Conv1D (GPT-2) stores it transposed, [in, out]."""
    if isinstance(layer, nn.Linear):
        return layer.weight.detach()
    return layer.weight.detach().t()


def _is_conv1d(module: nn.Module) -> bool:
    try:  # imported lazily: naive.py must not require transformers for its tensor functions
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return False
    return isinstance(module, Conv1D)


def _skipped(name: str, skip_modules) -> bool:
    # Same rule as int8kern.quantize_model: an entry matches a dotted component of the name
    # ("lm_head" skips "lm_head" and "model.lm_head", not "lm_head_extra").
    return any(f".{s}." in f".{name}." for s in skip_modules)


def replace_linears(model: nn.Module, make, skip_modules=("lm_head",)) -> nn.Module:
    """Replace in place every nn.Linear / Conv1D not in skip_modules by make(layer).

    Like int8kern.quantize_model, a layer whose weight is shared with another module (tied
    embeddings) stays in float, so both replace exactly the same layers."""
    owners = {}
    for mod in model.modules():
        for p in mod.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    targets = [(n, m) for n, m in model.named_modules()
               if n and (isinstance(m, nn.Linear) or _is_conv1d(m))
               and not _skipped(n, skip_modules) and owners.get(id(m.weight), 0) <= 1]
    for name, layer in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(layer))
    return model


class NaiveInt8Linear(nn.Module):
    """Per-tensor int8 linear layer (absmax or zero-point), weights and activations.

    The weight is stored as int8 plus one scale (and one zero-point), so the memory
    footprint is that of a real int8 layer; forward dequantizes both operands and runs the
    matmul in the input's float dtype."""

    def __init__(self, layer: nn.Module, method: str):
        super().__init__()
        if method not in _PARAMS:
            raise ValueError(f"method must be one of {tuple(_PARAMS)}, got {method!r}")
        self.method = method
        W = _weight_out_in(layer)
        self.in_features, self.out_features = W.shape[1], W.shape[0]
        params, lo = _PARAMS[method]
        self.register_buffer("weight", _fake_quant(W, params, lo)[0])
        scale, zero = params(W.float())
        self.register_buffer("weight_scale", scale.reshape(()))
        self.register_buffer("weight_zero", zero.reshape(()))
        bias = layer.bias.detach().clone() if layer.bias is not None else None
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None

    def dequantized_weight(self) -> torch.Tensor:
        return (self.weight.float() - self.weight_zero) / self.weight_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One scale for the whole activation tensor (all tokens of the batch): the naive scheme.
        _, x_dq = _fake_quant(x, *_PARAMS[self.method])
        W = self.dequantized_weight().to(x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x_dq, W, bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, method={self.method}"


class SimLLMInt8Linear(nn.Module):
    """LLM.int8() in plain PyTorch float math, same contract as int8kern.Int8LinearLt.

    Input columns with any finite |x| >= threshold (threshold > 0) are outlier columns: they
    are multiplied in x's dtype with the dequantized int8 weight columns. All other columns
    are quantized per row by the absmax of the row's elements below the threshold (round
    half to even, as the kernels), multiplied with the int8 weights exactly (float64 holds
    every such sum), and dequantized by row_absmax/127 * weight_absmax/127 in float32, in
    the order of int8kern.reference. Counts outlier columns per call for the report."""

    def __init__(self, layer: nn.Module, threshold: float = 6.0):
        super().__init__()
        W = _weight_out_in(layer)
        self.in_features, self.out_features = W.shape[1], W.shape[0]
        q, absmax = rowwise_quantize(W)
        self.register_buffer("weight", q)
        self.register_buffer("weight_absmax", absmax)
        bias = layer.bias.detach().clone() if layer.bias is not None else None
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.threshold = float(threshold)
        self.calls = 0
        self.outlier_cols_total = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        xf = x2.float()
        a = xf.abs()
        if self.threshold > 0:
            outlier = (a >= self.threshold) & torch.isfinite(a)  # Inf/NaN stay in their row
            cols = outlier.any(dim=0).nonzero().squeeze(1)
            # bitsandbytes' (and the kernels') rule: the row absmax skips the outlier
            # *elements*; the smaller entries of an outlier column still count in it.
            a = a.masked_fill(outlier, 0.0)
        else:
            cols = torch.empty(0, dtype=torch.long, device=x.device)
        self.calls += 1
        self.outlier_cols_total += int(cols.numel())
        row_absmax = a.amax(dim=1)
        scale = torch.where(row_absmax > 0, _div127(row_absmax), torch.zeros_like(row_absmax))
        xq = torch.round(xf * scale[:, None]).clamp(-127, 127).nan_to_num(nan=0.0)
        if cols.numel():
            xq.index_fill_(1, cols, 0.0)  # outlier columns go through the float path only
        # int8 x int8 products summed in float64: every such sum (< 2**53) is exact, like
        # the kernels' int32 accumulator. float32 would round once sums pass 2**24, and any
        # last-bit difference is amplified by the int8 rounding of the next layers (see
        # int8kern.eval.run.dithered_perplexity).
        acc = (xq.double() @ self.weight.double().t()).float()
        w_scale = _over127(self.weight_absmax)
        out = acc * _over127(row_absmax)[:, None] * w_scale[None, :]
        if self.bias is not None:
            out = out + self.bias.float()
        if cols.numel():  # the outlier columns against the dequantized int8 weights: summed
            # in float64 and rounded once to x's dtype, the most accurate value of the product
            # (int8kern's CPU kernel does the same, so both agree bit for bit there).
            w_cols = (self.weight[:, cols].float() * w_scale[:, None]).to(x.dtype)
            out = out + (x2[:, cols].double() @ w_cols.double().t()).to(x.dtype).float()
        out = out.to(x.dtype)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, threshold={self.threshold}"


def quantize_model_naive(model: nn.Module, method: str = "absmax",
                         skip_modules=("lm_head",)) -> nn.Module:
    """Per-tensor int8 ('absmax' or 'zeropoint') on every linear layer, in place."""
    return replace_linears(model, lambda layer: NaiveInt8Linear(layer, method), skip_modules)


def simulate_llm_int8(model: nn.Module, threshold: float = 6.0,
                      skip_modules=("lm_head",)) -> nn.Module:
    """LLM.int8() in plain PyTorch on every linear layer, in place (threshold 0: vector-wise)."""
    return replace_linears(model, lambda layer: SimLLMInt8Linear(layer, threshold), skip_modules)
