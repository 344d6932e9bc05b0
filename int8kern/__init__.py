"""int8kern: LLM.int8() kernels for PyTorch (CPU and CUDA)."""
from . import ops, reference
from .nn import Int8LinearLt, quantize_model
from .ops import (
    decode_attention,
    dequantize_matmul,
    get_num_threads,
    int8_linear,
    int8_matmul,
    int8_scaled_matmul,
    quantize_rowwise,
    set_num_threads,
)

__version__ = "0.1.0"
__all__ = [
    "ops",
    "reference",
    "Int8LinearLt",
    "quantize_model",
    "quantize_rowwise",
    "int8_matmul",
    "dequantize_matmul",
    "int8_scaled_matmul",
    "int8_linear",
    "decode_attention",
    "get_num_threads",
    "set_num_threads",
]
