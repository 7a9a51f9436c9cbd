"""The model registry: everything prac_dist knows about a Hugging Face model family, in one table.

Every part reads it: patching (linear groups, norm, MLP, attention-output linears), the fused loss
(`causal_lm`, `fused_loss`), the planner (`shape`), FSDP wrapping (`layers_path`) and the prac-train
presets (built from prac_dist.models.shapes). A family missing from one part is a missing field here,
and tests/patching/test_registry.py builds every entry and checks each part against it.
Decoders outside this table are patched by structural discovery (prac_dist.patching.discover).
This module imports nothing from prac_dist: any folder may read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = ["Architecture", "ARCHITECTURES", "supported_model_types", "architecture_of"]


@dataclass(frozen=True)
class Architecture:
    causal_lm: str
    """The transformers class of the causal LM (e.g. 'LlamaForCausalLM')."""
    config_class: str
    """Its config class (e.g. 'LlamaConfig')."""
    layers_path: str
    """Dotted path from the causal LM to the ModuleList of decoder blocks (FSDP wraps each)."""
    linear_groups: Tuple[Tuple[str, ...], ...]
    """Sibling linears that read the same input tensor: they share one basis pair and one stored Z."""
    norm: str
    """'rms' (any *RMSNorm module, y = w · x̂) or 'layer' (nn.LayerNorm)."""
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
    fused_loss: bool = True
    """The causal LM's forward is exactly lm_head(hidden) then self.loss_function(logits, labels, ...)
    (checked against the transformers 5.x source), so the chunked linear + cross-entropy head gives
    the same loss. False for models that post-process logits (Gemma's soft-capping) or add to the loss."""
    shape: str = "llama"
    """The planner's shape family: 'llama' (RMSNorm + SwiGLU, hidden_size/...) or 'gpt2' (n_embd/...)."""


def _llama_like(prefix: str) -> Architecture:
    return Architecture(
        causal_lm=f"{prefix}ForCausalLM",
        config_class=f"{prefix}Config",
        layers_path="model.layers",
        linear_groups=(("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",)),
        norm="rms",
        mlp="swiglu",
        attention_output=("self_attn.o_proj",),
    )


ARCHITECTURES: Dict[str, Architecture] = {
    "llama": _llama_like("Llama"),
    "mistral": _llama_like("Mistral"),
    "qwen2": _llama_like("Qwen2"),
    "qwen3": _llama_like("Qwen3"),  # also RMSNorms on q and k per head: the 'rms' rule patches them too
    "gpt2": Architecture(
        causal_lm="GPT2LMHeadModel",
        config_class="GPT2Config",
        layers_path="transformer.h",
        linear_groups=(("c_attn",), ("c_proj",), ("c_fc",)),
        norm="layer",
        activation="act",
        transposed=True,
        attention_output=("attn.c_proj",),
        shape="gpt2",
    ),
}


def supported_model_types() -> Tuple[str, ...]:
    return tuple(sorted(ARCHITECTURES))


def architecture_of(model) -> Optional[Architecture]:
    """The registry entry of a model (or of its HF config), None when its model_type is not registered."""
    config = getattr(model, "config", model)
    return ARCHITECTURES.get(getattr(config, "model_type", None))
