"""int8kern as a transformers quantization method, "int8kern" (tested with transformers 5.24.0).

transformers 5 loads a checkpoint tensor by tensor (core_model_loading): each key is renamed
by the model's and the quantizer's WeightConverters, read onto its device from the device map,
passed through the converters' ConversionOps and, when `param_needs_quantization` says so,
through the quantizer's own op. This module plugs into those hooks:

* `_process_model_before_weight_loading` swaps nn.Linear / GPT-2 Conv1D for Int8LinearLt while
  the model is still on the meta device (shapes only: nothing is allocated);
* on-load quantization (a float checkpoint): `Int8KernQuantize` quantizes each weight on its
  target device as it is read, so the float model never exists in memory;
* pre-quantized checkpoints (int8kern's own, or bitsandbytes LLM.int8() ones): `weight` int8
  and `weight_absmax` float32 load as they are; `get_weight_conversions` maps bitsandbytes'
  `SCB` to `weight_absmax` (`Int8KernFromBitsandbytes`).

The 5.x minors still move these hooks (signatures changed between 5.20 and 5.24).

Loading an int8kern checkpoint WITHOUT `import int8kern.hf` is not refused, and in transformers
5.24 cannot be while the checkpoint keeps its layout (int8 `weight` [out, in], float32
`weight_absmax`, standard file names, `quantization_config` in config.json). A plain load runs no
int8kern code, so only what transformers itself checks could stop it, and in 5.24 that is:
* an unknown `quant_method`: `AutoHfQuantizer.supports_quant_method` logs "Unknown quantization
  type" and loads without a quantizer (a warning, not an error);
* the safetensors `metadata["format"]`: no longer read on load (4.x raised for unknown formats;
  a file with format "int8kern" loads silently in 5.24);
* unexpected keys (`weight_absmax`): listed in the load report, a warning;
* a checkpoint tensor of another dtype: cast to the parameter's dtype (int8 -> float, silently);
* a tensor of another shape: a RuntimeError, but with transformers' generic "ignore_mismatched_sizes"
  message (and `ignore_mismatched_sizes=True` reinitialises the layer); making it fire means
  storing `weight` in a shape other than [out, in], which breaks the layout every reader
  (bitsandbytes' included) expects;
* config.json is validated before any quantizer exists, so a field that made a plain load fail
  would fail the int8kern load too.
tests/test_hf.py::test_loading_without_int8kern_hf records what 5.24 does, so a change is seen.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from transformers.core_model_loading import ConversionOps, WeightConverter
from transformers.pytorch_utils import Conv1D
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.quantizers_utils import should_convert_module
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..nn import Int8LinearLt, _quantize_weight

QUANT_METHOD = "int8kern"
# bitsandbytes' Linear8bitLt.weight_format codes (bitsandbytes.utils): only "row" (0) is
# nn.Linear's row-major layout; the tiled ones come from bitsandbytes <= 0.44 on Turing/Ampere.
_BNB_WEIGHT_FORMATS = {0: "row", 1: "col32", 2: "col_turing", 3: "col_ampere"}


@register_quantization_config(QUANT_METHOD)
class Int8KernConfig(QuantizationConfigMixin):
    """`from_pretrained(..., quantization_config=Int8KernConfig())`: every nn.Linear / Conv1D
    becomes an Int8LinearLt (LLM.int8(), outlier columns |x| >= threshold in 16-bit), except
    the modules named in `modules_to_not_convert` (None: transformers' default, the output
    embedding and tied weights, as for bitsandbytes)."""

    def __init__(self, threshold: float = 6.0, modules_to_not_convert: Optional[list[str]] = None,
                 **kwargs: Any):
        # from_dict passes the saved dict back in, quant_method included
        kwargs.pop("quant_method", None)
        if kwargs:
            raise TypeError(f"Int8KernConfig: unknown arguments {sorted(kwargs)}; "
                            "expected threshold, modules_to_not_convert")
        if not (float(threshold) >= 0.0):
            raise ValueError(f"Int8KernConfig: threshold must be >= 0 (0 disables outliers), got {threshold}")
        self.quant_method = QUANT_METHOD
        self.threshold = float(threshold)
        self.modules_to_not_convert = list(modules_to_not_convert) if modules_to_not_convert is not None else None

    @classmethod
    def from_bitsandbytes(cls, bnb: dict) -> "Int8KernConfig":
        """The int8kern config equivalent to a bitsandbytes LLM.int8() `quantization_config`
        (a dict, as read from config.json)."""
        if bnb.get("quant_method") != "bitsandbytes" or not bnb.get("load_in_8bit", False):
            kind = "4-bit" if bnb.get("load_in_4bit", False) else repr(bnb.get("quant_method"))
            raise ValueError("int8kern: only bitsandbytes LLM.int8() checkpoints (quant_method 'bitsandbytes', "
                             f"load_in_8bit true) can be loaded, got {kind}")
        if bnb.get("llm_int8_has_fp16_weight", False):
            raise ValueError("int8kern: llm_int8_has_fp16_weight checkpoints hold float weights, not int8; "
                             "load them as a float model and quantize with Int8KernConfig")
        return cls(threshold=bnb.get("llm_int8_threshold", 6.0),
                   modules_to_not_convert=bnb.get("llm_int8_skip_modules"))


class _Passthrough(ConversionOps):
    """What the ops below become on save (`reverse_op`): the tensors are written as they are,
    in int8kern's format (int8 `weight`, float32 `weight_absmax`)."""

    def convert(self, input_dict, **kwargs):
        return input_dict

    @property
    def reverse_op(self) -> ConversionOps:
        return self


class Int8KernQuantize(ConversionOps):
    """On-load quantization: one float weight [out, in] (Conv1D: [in, out]) in, int8 `weight`
    and float32 `weight_absmax` out, computed on the device the weight was read onto."""

    def __init__(self, hf_quantizer: "Int8KernHfQuantizer"):
        self.transposed = hf_quantizer.conv1d_modules

    def convert(self, input_dict, model=None, **kwargs):
        out = {}
        for key, value in input_dict.items():
            value = value[0] if isinstance(value, list) else value
            name = key.rpartition(".")[0]
            layer = model.get_submodule(name)
            if name in self.transposed:  # Conv1D stores its weight [in, out]
                value = value.T
            want = [layer.out_features, layer.in_features]
            if list(value.shape) != want or not value.is_floating_point():
                raise ValueError(f"int8kern: checkpoint tensor '{key}' must be a float weight "
                                 f"{want if name not in self.transposed else want[::-1]}, "
                                 f"got {value.dtype} {list(value.shape)}")
            out[key], out[name + ".weight_absmax"] = _quantize_weight(value)
        return out

    @property
    def reverse_op(self) -> ConversionOps:
        return _Passthrough()


class Int8KernFromBitsandbytes(ConversionOps):
    """A bitsandbytes LLM.int8() layer (`weight` int8 [out, in] row-major, `SCB` float32 =
    the per-row absmax, `weight_format` 0) in, int8kern's (`weight`, `weight_absmax`) out:
    the same numbers under other names. Every other `*.weight` of the checkpoint (norms,
    embeddings, int8kern's own int8 weights) comes alone and passes through."""

    def convert(self, input_dict, full_layer_name=None, model=None, **kwargs):
        tensors = {k: v[0] if isinstance(v, list) else v for k, v in input_dict.items()}
        if set(tensors) == {"weight"}:
            return tensors
        if "SCB" not in tensors:
            raise ValueError(f"int8kern: bitsandbytes layer '{full_layer_name}' has weight_format but no SCB "
                             "(the per-row scales) in the checkpoint")
        fmt = tensors.get("weight_format", 0)
        code = int(fmt.item()) if isinstance(fmt, torch.Tensor) and fmt.numel() == 1 else fmt
        if code != 0:
            name = _BNB_WEIGHT_FORMATS.get(code, code) if isinstance(code, int) else code
            raise ValueError(f"int8kern: bitsandbytes layer '{full_layer_name}' has weight_format {name!r}; "
                             "only 0 ('row', nn.Linear's row-major layout, written by bitsandbytes >= 0.45) "
                             "can be read. Load and re-save it with bitsandbytes >= 0.45 first.")
        weight, scb = tensors["weight"], tensors["SCB"]
        layer = model.get_submodule(full_layer_name.rpartition(".")[0]) if model is not None else None
        if not isinstance(layer, Int8LinearLt):
            raise ValueError(f"int8kern: '{full_layer_name}' is int8 (bitsandbytes) in the checkpoint but the "
                             f"model keeps that module as {type(layer).__name__}: leave it out of "
                             "modules_to_not_convert")
        if weight.dtype != torch.int8 or scb.dtype != torch.float32 or scb.shape != weight.shape[:1]:
            raise ValueError(f"int8kern: bitsandbytes layer '{full_layer_name}' must hold int8 weight [N, K] and "
                             f"float32 SCB [N], got {weight.dtype} {list(weight.shape)} and "
                             f"{scb.dtype} {list(scb.shape)}")
        return {"weight": weight, "weight_absmax": scb}

    @property
    def reverse_op(self) -> ConversionOps:
        return _Passthrough()


@register_quantizer(QUANT_METHOD)
class Int8KernHfQuantizer(HfQuantizer):
    """The transformers side of Int8KernConfig (see the module docstring)."""

    requires_calibration = False
    quantization_config: Int8KernConfig

    def __init__(self, quantization_config: Int8KernConfig, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self.conv1d_modules: set[str] = set()
        self.modules_to_not_convert: list[str] = []

    def validate_environment(self, device_map=None, **kwargs):
        # Called again with the inferred map when device_map="auto". transformers 5.24 writes a
        # disk-offloaded weight before any quantize op runs (offload_and_maybe_resave_param),
        # so on-load quantization to disk would leave zeros: refuse it.
        if (not self.pre_quantized and isinstance(device_map, dict)
                and "disk" in {str(v) for v in device_map.values()}):
            on_disk = sorted(k for k, v in device_map.items() if str(v) == "disk")
            raise ValueError("int8kern: quantizing on load cannot offload to disk (device_map puts "
                             f"{on_disk[:4]}{'...' if len(on_disk) > 4 else ''} on 'disk'); give max_memory "
                             "room for the int8 model, or save the quantized model first "
                             "(save_pretrained) and load that with disk offload")

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        # Pre-quantized weights are already int8: transformers then checks their shapes itself.
        if self.pre_quantized:
            return False
        name, _, leaf = param_name.rpartition(".")
        return leaf == "weight" and isinstance(model.get_submodule(name), Int8LinearLt)

    def get_quantize_ops(self) -> ConversionOps:
        return Int8KernQuantize(self)

    def get_new_dtype(self, converter, param, dtype):
        # The load dtype of a pre-quantized tensor: `dtype` is the model parameter's. An int8
        # target (an Int8LinearLt weight, which also collects bitsandbytes' SCB and
        # weight_format) takes the checkpoint's tensors as stored; float tensors take `dtype`,
        # which for weight_absmax is the module's float32, whatever dtype= the user asked for.
        if dtype == torch.int8:
            return None
        is_float = (param.get_dtype().startswith(("F", "BF")) if hasattr(param, "get_dtype")
                    else param.is_floating_point())
        return dtype if is_float else None

    def get_weight_conversions(self):
        # bitsandbytes checkpoints: `SCB` -> `weight_absmax` (and `weight_format` checked), keyed on
        # the layer's `weight`. Handled here, with the checkpoint's quant_method rewritten to
        # "int8kern" (config_from_bitsandbytes), rather than by registering under
        # "bitsandbytes": that name belongs to transformers' own Bnb8BitHfQuantizer (5.24's
        # register_quantizer refuses to replace it). "weight" must stay the first source
        # pattern: targets are renamed after it, and on save the reversed converter matches
        # `weight` only, so the model is written back in int8kern's format.
        if not self.pre_quantized:
            return []
        return [WeightConverter(["weight", "SCB", "weight_format"], "weight", [Int8KernFromBitsandbytes()])]

    def _process_model_before_weight_loading(self, model, keep_in_fp32_modules=None, **kwargs):
        self.modules_to_not_convert = self.get_modules_to_not_convert(
            model, self.quantization_config.modules_to_not_convert, model._keep_in_fp32_modules)
        replaced = 0
        for name, module in list(model.named_modules()):
            if not name or not should_convert_module(name, self.modules_to_not_convert):
                continue
            is_conv1d = isinstance(module, Conv1D)
            if not (is_conv1d or type(module) is nn.Linear):
                continue
            in_f, out_f = module.weight.shape if is_conv1d else (module.in_features, module.out_features)
            layer = Int8LinearLt(in_f, out_f, bias=module.bias is not None,
                                 threshold=self.quantization_config.threshold, device="meta",
                                 dtype=module.weight.dtype)
            model.set_submodule(name, layer)
            if is_conv1d:
                self.conv1d_modules.add(name)
            replaced += 1
        if replaced == 0:
            raise ValueError(f"int8kern: no nn.Linear or Conv1D to quantize in {type(model).__name__} "
                             f"(modules_to_not_convert={self.modules_to_not_convert})")
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        return model

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        # The int8 base is frozen; adapters (int8kern.hf.lora) train on top of it.
        return True

    @property
    def is_compileable(self) -> bool:
        # int8kern's ops are torch.library custom ops with fake kernels: no graph breaks.
        return True

    def _dequantize(self, model, dtype=None):
        for name, module in list(model.named_modules()):
            if isinstance(module, Int8LinearLt):
                model.set_submodule(name, dequantize_layer(module, dtype))
        return model


def dequantize_layer(layer: Int8LinearLt, dtype: Optional[torch.dtype] = None) -> nn.Linear:
    """The nn.Linear whose weight is the layer's int8 weight times absmax / 127 (in float32,
    then cast to `dtype`, default the bias's dtype or float32)."""
    dtype = dtype or (layer.bias.dtype if layer.bias is not None else torch.float32)
    linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                       device="meta", dtype=dtype)
    w = layer.weight.float() * (layer.weight_absmax.float() / 127.0)[:, None]
    linear.weight = nn.Parameter(w.to(dtype), requires_grad=False)
    if layer.bias is not None:
        linear.bias = nn.Parameter(layer.bias.detach().to(dtype), requires_grad=layer.bias.requires_grad)
    return linear


def config_from_bitsandbytes(path_or_config, **kwargs):
    """The model config of a bitsandbytes LLM.int8() checkpoint with its quantization_config
    rewritten for int8kern, to pass as `from_pretrained(path, config=...)`: the checkpoint then
    loads into Int8LinearLt layers, bitsandbytes neither needed nor imported."""
    from transformers import AutoConfig, PretrainedConfig

    config = (path_or_config if isinstance(path_or_config, PretrainedConfig)
              else AutoConfig.from_pretrained(path_or_config, **kwargs))
    qc = getattr(config, "quantization_config", None)
    if qc is None:
        raise ValueError("int8kern: this config has no quantization_config: not a bitsandbytes checkpoint")
    qc = qc if isinstance(qc, dict) else qc.to_dict()
    # A dict, as from config.json: transformers reads it with AutoQuantizationConfig.from_dict.
    config.quantization_config = Int8KernConfig.from_bitsandbytes(qc).to_dict()
    return config
