"""int8kern in the Hugging Face stack. Imported explicitly (`import int8kern.hf`), never by
`import int8kern`: importing it registers the transformers quantization method "int8kern".

    import int8kern.hf
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=int8kern.hf.Int8KernConfig())
    model.save_pretrained(out)                      # int8 weight + float32 weight_absmax
    model = AutoModelForCausalLM.from_pretrained(out)          # int8 again, bit for bit

    # a bitsandbytes LLM.int8() checkpoint, without bitsandbytes
    model = AutoModelForCausalLM.from_pretrained(bnb_path, config=int8kern.hf.config_from_bitsandbytes(bnb_path))

CPU decode attention (int8kern.ops.decode_attention) as a transformers attention
implementation, registered by the same import:

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="int8kern", ...)

LoRA with PEFT on the int8 base: `int8kern.hf.lora` (needs peft; its `lora_config`,
`lora_target_modules` and `load_adapter` are also reachable here, imported on first use so
that `import int8kern.hf` does not import peft).
"""
from .attention import ATTN_IMPLEMENTATION, int8kern_attention_forward
from .quantizer import (
    QUANT_METHOD,
    Int8KernConfig,
    Int8KernHfQuantizer,
    config_from_bitsandbytes,
    dequantize_layer,
)

__all__ = ["ATTN_IMPLEMENTATION", "int8kern_attention_forward", "QUANT_METHOD", "Int8KernConfig",
           "Int8KernHfQuantizer", "config_from_bitsandbytes",
           "dequantize_layer"]


_LORA_NAMES = ("Int8LoraLinear", "lora_config", "lora_target_modules", "load_adapter")


def __getattr__(name):
    # peft is optional: import int8kern.hf.lora only when one of its names is asked for.
    if name in _LORA_NAMES:
        from . import lora
        return getattr(lora, name)
    raise AttributeError(f"module 'int8kern.hf' has no attribute {name!r}")
