"""Which modules PRAC patches, per Hugging Face model type: one table, not one function per model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = ["Architecture", "ARCHITECTURES", "supported_model_types"]


@dataclass(frozen=True)
class Architecture:
    linear_groups: Tuple[Tuple[str, ...], ...]
    """Sibling linears that read the same input tensor: they share one basis pair and one stored Z."""
    norm: str
    """'rms' (any *RMSNorm module) or 'layer' (nn.LayerNorm)."""
    mlp: Optional[str] = None
    """'swiglu': *MLP modules with gate_proj/up_proj/down_proj get the lean SwiGLU."""
    activation: Optional[str] = None
    """Attribute name of a GELU activation module to replace ('act' in GPT-2's MLP)."""
    transposed: bool = False
    """GPT-2's Conv1D keeps the weight as (in, out)."""
    attention_output: Tuple[str, ...] = ()
    """Linears fed by the attention kernel's output (name suffixes). SDPA and flash attention return
    it in [B, S, H, hd] layout and keep it for their own backward, so HF's transpose+reshape is a view
    of that storage: the plain Linear then saves nothing extra, while a compressed Z would add
    (r1 + r2)/n of it (measured: 0.6 units of d per token per layer at 0.3/0.3). These stay exact
    unless attention is 'eager' or the user names them in target_modules."""


_LLAMA_LIKE = Architecture(
    linear_groups=(("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",)),
    norm="rms",
    mlp="swiglu",
    attention_output=("self_attn.o_proj",),
)

ARCHITECTURES: Dict[str, Architecture] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gpt2": Architecture(
        linear_groups=(("c_attn",), ("c_proj",), ("c_fc",)),
        norm="layer",
        activation="act",
        transposed=True,
        attention_output=("attn.c_proj",),
    ),
}


def supported_model_types() -> Tuple[str, ...]:
    return tuple(sorted(ARCHITECTURES))
