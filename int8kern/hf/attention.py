"""transformers attention "int8kern": int8kern.ops.decode_attention for decode steps on the CPU,
transformers' own SDPA for everything else.

    import int8kern.hf
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="int8kern", ...)
    # or, on a loaded model: model.set_attn_implementation("int8kern")

Why: on a CPU, torch's SDPA for one query token reads the KV cache at ~6 GB/s and cost a
SmolLM2-135M decode step about as much as all its int8 GEMVs together (benchmarks/NOTES.md,
2026-12-04); decode_attention reads each K and V row once for all the query heads of its group,
and skips a static cache's unused positions. Any call it does not cover (a prompt of more than
one token, a GPU, dropout, a float or per-head mask, softcapping, attention sinks) goes to
transformers' sdpa_attention_forward unchanged, so the two give the same model otherwise.
Masks are built as for "sdpa" (boolean). Works under torch.compile with fullgraph=True (the
op has a fake implementation; the choice depends on shapes, dtypes and devices only).
"""
from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .. import ops

ATTN_IMPLEMENTATION = "int8kern"

# Keyword arguments some models pass whose effect decode_attention does not implement; with
# any of them set (not None / False) the call goes to SDPA, which applies or refuses them.
_UNSUPPORTED_KWARGS = ("softcap", "position_bias", "s_aux", "sinks", "output_attentions", "head_mask")


def decode_attention_applies(query, key, value, attention_mask, dropout: float = 0.0, **kwargs) -> bool:
    """Whether int8kern_attention_forward computes this call with ops.decode_attention."""
    if query.device.type != "cpu" or query.dim() != 4 or query.shape[2] != 1 or dropout != 0.0:
        return False
    # decode_attention has no backward: a call that needs a gradient (grad mode on, and the
    # model's float parameters making the query require one) goes to SDPA.
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad):
        return False
    if not (query.dtype == key.dtype == value.dtype) or key.shape != value.shape:
        return False
    if any(kwargs.get(name) not in (None, False) for name in _UNSUPPORTED_KWARGS):
        return False
    if attention_mask is None:
        return True
    m = attention_mask
    return (m.dtype == torch.bool and m.dim() == 4 and m.shape[1] == 1 and m.shape[2] == 1
            and m.shape[3] == key.shape[2] and m.shape[0] in (1, query.shape[0]))


def int8kern_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query [B, Hq, q_len, D], key/value
    [B, Hkv, S, D] -> ([B, q_len, Hq, D], None), as sdpa_attention_forward returns."""
    if decode_attention_applies(query, key, value, attention_mask, dropout, **kwargs):
        out = ops.decode_attention(query, key, value, attention_mask, scaling)
        return out.transpose(1, 2), None  # [B, 1, Hq, D]: contiguous already (q_len is 1)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


AttentionInterface.register(ATTN_IMPLEMENTATION, int8kern_attention_forward)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
