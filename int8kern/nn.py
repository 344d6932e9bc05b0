"""Int8LinearLt, the LLM.int8() linear layer, and quantize_model for transformers models."""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
from torch import nn

from . import ops

__all__ = ["Int8LinearLt", "quantize_model"]


def _quantize_weight(weight: torch.Tensor):
    """Per-output-row absmax int8 quantization of a float weight [N, K] on its own device."""
    q, absmax, _ = ops.quantize_rowwise(weight.detach(), 0.0)
    return q, absmax


class Int8LinearLt(nn.Module):
    """y = x @ W.T + b with W stored in int8 (one absmax scale per output row) and the
    LLM.int8() forward: outlier columns of x (|x| >= threshold) in 16-bit, the rest in int8.

    State: `weight` int8 [out, in] (frozen parameter), `weight_absmax` float32 [out] (buffer),
    `bias` [out] (parameter, in `dtype`) or None. The output has x's dtype.

    Loading a float `weight` (an nn.Linear's state_dict, with no `weight_absmax`) quantizes it
    on load; loading tensors of the wrong shape or dtype raises an error naming the key.
    `.half()`/`.to(dtype)` cast the bias only: the int8 weight and its float32 scales keep
    their dtypes (moving devices moves them all).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, threshold: float = 6.0,
                 device=None, dtype=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.threshold = float(threshold)
        # Allocated empty first: on the meta device (transformers builds models there before
        # loading, and under accelerate.init_empty_weights, which moves each registered
        # parameter to meta) a layer is only a shape, and initialising and quantizing an
        # [out, in] float weight there would be wasted work (0.4-0.6 s at 8192 x 8192).
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=torch.int8),
                                   requires_grad=False)
        self.register_buffer("weight_absmax", torch.empty(out_features, device=device, dtype=torch.float32))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        if self.weight.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise like nn.Linear, then quantize, so a fresh layer computes something sane."""
        device = self.weight.device
        w = torch.empty(self.out_features, self.in_features, device=device, dtype=torch.float32)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        if self.in_features > 0:
            q, absmax = _quantize_weight(w)
            self.weight.copy_(q)
            self.weight_absmax.copy_(absmax.to(self.weight_absmax.device))
        else:
            self.weight_absmax.zero_()
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            self.bias.uniform_(-bound, bound)

    @classmethod
    def from_linear(cls, linear: nn.Linear, threshold: float = 6.0) -> "Int8LinearLt":
        """Quantize an nn.Linear (weight [out, in]) into a new Int8LinearLt on the same device."""
        return cls._from_weight(linear.weight, linear.bias, threshold)

    @classmethod
    def _from_weight(cls, weight: torch.Tensor, bias: Optional[torch.Tensor], threshold: float) -> "Int8LinearLt":
        out_features, in_features = weight.shape
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features, layer.threshold = in_features, out_features, float(threshold)
        q, absmax = _quantize_weight(weight)
        layer.weight = nn.Parameter(q, requires_grad=False)
        layer.register_buffer("weight_absmax", absmax)
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        else:
            layer.register_parameter("bias", None)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The op itself, not the ops.int8_linear wrapper: one Python call less per layer call
        # in eager decoding (threshold is already a float). Through ops._ops, the backend the
        # ops module currently uses: torch.ops.int8kern, or int8kern_emu inside
        # int8kern.emu.backend() (the emulated CUDA kernels).
        return ops._ops.int8_linear.default(x, self.weight, self.weight_absmax, self.bias, self.threshold)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, threshold={self.threshold}")

    def _apply(self, fn, recurse=True):
        # nn.Module.half()/.to(dtype) would cast every floating tensor, the float32 scales
        # included; keep their values exact and follow only the device move.
        absmax = self.weight_absmax
        super()._apply(fn, recurse)
        moved = self.weight_absmax
        if moved.dtype != torch.float32:
            self.weight_absmax = absmax.to(device=moved.device)
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        w_key, a_key = prefix + "weight", prefix + "weight_absmax"
        w = state_dict.get(w_key)
        if w is not None and w.is_floating_point() and a_key not in state_dict:
            # An nn.Linear's state_dict: quantize on load.
            q, absmax = _quantize_weight(w.to(self.weight.device))
            state_dict = dict(state_dict)
            state_dict[w_key], state_dict[a_key] = q, absmax
        expected = {
            w_key: (torch.int8, (self.out_features, self.in_features)),
            a_key: (torch.float32, (self.out_features,)),
        }
        if self.bias is not None:
            expected[prefix + "bias"] = (None, (self.out_features,))
        for key, (dtype, shape) in expected.items():
            t = state_dict.get(key)
            if t is None:
                continue
            if tuple(t.shape) != shape or (dtype is not None and t.dtype != dtype) or (
                    dtype is None and not t.is_floating_point()):
                want = f"{dtype if dtype is not None else 'a floating dtype'} {list(shape)}"
                raise RuntimeError(f"Int8LinearLt: state_dict key '{key}' must be {want}, "
                                   f"got {t.dtype} {list(t.shape)}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def _conv1d_class():
    try:
        from transformers.pytorch_utils import Conv1D
    except Exception:  # transformers is optional
        return None
    return Conv1D


def _skipped(name: str, skip_modules: Iterable[str]) -> bool:
    dotted = f".{name}."
    return any(f".{s}." in dotted for s in skip_modules)


def quantize_model(model: nn.Module, threshold: float = 6.0, skip_modules: Iterable[str] = ("lm_head",),
                   progress: Optional[bool] = None, quantize_tied: bool = False) -> nn.Module:
    """Replace, in place, every nn.Linear and transformers Conv1D (GPT-2's layers, weight
    stored [in, out]) whose qualified name does not contain one of `skip_modules` as a
    dotted component, by an Int8LinearLt on the same device; returns the model.

    A layer whose weight is shared with another module (tied weights) is left in float: its
    quantized copy would untie it. quantize_tied=True quantizes it all the same, into an int8
    copy of its own, the other owner keeping the float weight: more memory (the copy), but a
    decode step then reads int8 where it read float. On SmolLM2-135M (lm_head tied to the
    input embedding; pass skip_modules=() too) the lm_head is 113 MB of float32 read per
    token, more than the 80 MB of all the other layers in int8, while the embedding reads one
    row. A progress bar shows for models with many layers (progress=None: when there are 64
    or more).
    """
    skip_modules = tuple(skip_modules or ())
    conv1d = _conv1d_class()
    types = (nn.Linear,) + ((conv1d,) if conv1d is not None else ())
    owners = {}
    for mod in model.modules():
        for p in mod.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    targets = [(name, mod) for name, mod in model.named_modules()
               if name and isinstance(mod, types) and not _skipped(name, skip_modules)
               and (quantize_tied or owners.get(id(mod.weight), 0) <= 1)]
    bar = None
    if progress or (progress is None and len(targets) >= 64):
        from tqdm.auto import tqdm
        bar = tqdm(total=len(targets), desc="int8kern: quantizing", unit="layer")
    for name, mod in targets:
        weight = mod.weight.T if conv1d is not None and isinstance(mod, conv1d) else mod.weight
        layer = Int8LinearLt._from_weight(weight, mod.bias, threshold)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return model
