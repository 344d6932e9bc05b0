"""LoRA with PEFT (tested with peft 0.21.2) on a frozen int8kern base.

peft has no dispatcher for Int8LinearLt, and its "all-linear" matches nn.Linear and Conv1D
only, so both are supplied here:

    import int8kern.hf
    from int8kern.hf.lora import lora_config, lora_target_modules
    from peft import get_peft_model

    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=int8kern.hf.Int8KernConfig())
    model = get_peft_model(model, lora_config(r=8, target_modules=lora_target_modules(model)))
    ... train ...
    model.save_pretrained(adapter_dir)              # the adapter only (lora_A / lora_B)

peft keeps the custom-module mapping on the LoraConfig object and does not write it to
adapter_config.json, so a reload must register it again; `load_adapter` does that:

    base = AutoModelForCausalLM.from_pretrained(int8_dir)            # or quantize on load again
    model = int8kern.hf.lora.load_adapter(base, adapter_dir)          # PeftModel, same logits

(By hand: `config = LoraConfig.from_pretrained(adapter_dir); register(config);
PeftModel.from_pretrained(base, adapter_dir, config=config)`. Without it peft raises "Target
module Int8LinearLt(...) is not supported".)

`merge_and_unload()` dequantizes each int8 weight, adds the LoRA delta in float32 and
quantizes the sum again (one more rounding: at most half a step, absmax / 254, per weight,
plus float32 rounding); `unmerge` subtracts the delta the same way, so merge + unmerge is not
bit-exact either.
Only plain LoRA: DoRA and peft's other variants are refused by peft itself.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn

from ..nn import Int8LinearLt, _quantize_weight

__all__ = ["Int8LoraLinear", "register", "lora_config", "lora_target_modules", "load_adapter"]


class Int8LoraLinear(nn.Module, LoraLayer):
    """LoRA around an Int8LinearLt: y = base(x) + scaling * B(A(dropout(x))), with the int8
    `weight` and `weight_absmax` of the base never touched by training. Written after peft's
    own bitsandbytes layer (peft/tuners/lora/bnb.py, Linear8bitLt), without its variants."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, r: int = 0,
                 lora_alpha: int = 1, **kwargs: Any) -> None:
        super().__init__()
        LoraLayer.__init__(self, base_layer)
        self.fan_in_fan_out = False
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config,
                          target_name=kwargs.get("target_name", ""))

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        # peft's generic lookup knows nn.Linear and friends, not Int8LinearLt.
        return module.in_features, module.out_features

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """The adapter's change to the weight, [out, in], in float32."""
        a, b = self.lora_A[adapter].weight, self.lora_B[adapter].weight
        return (b.float() @ a.float()) * self.scaling[adapter]

    def _requantize(self, change) -> None:
        # Dequantize exactly as the forward reads the weight (int8 * absmax / 127 in float32),
        # apply the change, and quantize the result with the layer's own rounding.
        base = self.get_base_layer()
        w = base.weight.float() * (base.weight_absmax / 127.0)[:, None]
        w = change(w)
        if not torch.isfinite(w).all():
            raise ValueError(f"int8kern LoRA: the merged weight of {type(base).__name__} "
                             f"[{base.out_features}, {base.in_features}] is not finite; the adapter is broken")
        q, absmax = _quantize_weight(w)
        # In place: the Parameter and buffer objects stay the ones transformers and peft know.
        base.weight.data.copy_(q)
        base.weight_absmax.copy_(absmax)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Fold the active adapters into the int8 weight (dequantize, add, requantize).
        The weight is always checked for NaN/Inf before it is written, so `safe_merge` adds nothing."""
        for name in check_adapters_to_merge(self, adapter_names):
            if name not in self.lora_A:
                continue
            warnings.warn("int8kern LoRA: merging into the int8 weight rounds it again (<= absmax / 254 per weight)")
            delta = self.get_delta_weight(name).to(self.get_base_layer().weight.device)
            self._requantize(lambda w, d=delta: w + d)
            if self.lora_bias[name]:
                bias = self.get_base_layer().bias
                bias.data += self.lora_B[name].bias.to(bias.dtype)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name not in self.lora_A:
                continue
            delta = self.get_delta_weight(name).to(self.get_base_layer().weight.device)
            self._requantize(lambda w, d=delta: w - d)
            if self.lora_bias[name]:
                bias = self.get_base_layer().bias
                bias.data -= self.lora_B[name].bias.to(bias.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._check_forward_args(x, *args, **kwargs)
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError("int8kern LoRA: mixed-adapter batches (adapter_names=...) are not supported; "
                             "set one adapter with set_adapter()")
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            lora_a, lora_b = self.lora_A[name], self.lora_B[name]
            # Under autocast the adapter runs in the autocast dtype; otherwise in its own
            # (float32 by default) and the sum is cast back to the base output's dtype.
            if torch.is_autocast_enabled():
                result = result + lora_b(lora_a(self.lora_dropout[name](x))) * self.scaling[name]
            else:
                xa = self._cast_input_dtype(x, lora_a.weight.dtype)
                out = lora_b(lora_a(self.lora_dropout[name](xa))) * self.scaling[name]
                result = result + out.to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "lora." + super().__repr__()


def register(config: LoraConfig) -> LoraConfig:
    """Tell peft to wrap Int8LinearLt targets in Int8LoraLinear (returns the same config).
    Needed every time a LoraConfig is built or loaded: peft does not save the mapping."""
    config._register_custom_module({Int8LinearLt: Int8LoraLinear})
    return config


def lora_config(**kwargs: Any) -> LoraConfig:
    """`LoraConfig(**kwargs)` with the Int8LinearLt mapping registered."""
    return register(LoraConfig(**kwargs))


def lora_target_modules(model: nn.Module) -> list[str]:
    """The names (last dotted component, as peft's target_modules matches them) of the
    model's Int8LinearLt layers, sorted: what "all-linear" would have named before
    quantization, minus the layers kept in float (lm_head)."""
    # On a PeftModel the int8 layer sits at `<target>.base_layer`: name the target.
    names = sorted({name.replace(".base_layer", "").rpartition(".")[2]
                    for name, m in model.named_modules() if isinstance(m, Int8LinearLt)})
    if not names:
        raise ValueError(f"int8kern LoRA: {type(model).__name__} has no Int8LinearLt layer; load it with "
                         "quantization_config=Int8KernConfig() (or int8kern.quantize_model) first")
    return names


def load_adapter(model: nn.Module, adapter_dir, **kwargs: Any) -> PeftModel:
    """`PeftModel.from_pretrained(model, adapter_dir, **kwargs)` with the adapter's LoraConfig
    read from `adapter_dir` and the Int8LinearLt mapping registered on it."""
    config = register(LoraConfig.from_pretrained(adapter_dir))
    return PeftModel.from_pretrained(model, adapter_dir, config=config, **kwargs)
