"""Model shapes by name: the LLaMA sizes of the GaLore/PRAC papers and GPT-2.

A shape is all the planner needs (no weights); `hf_config` turns it into a Hugging Face
config and `build_model` into a randomly initialised model. This is the one preset table: the
planner, the benchmarks and prac-train's `model.preset` (prac_dist.train.models) read it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, Mapping, Optional

from prac_dist.models.registry import ARCHITECTURES

__all__ = ["ModelShape", "PRESETS", "get_shape", "shape_from_config", "hf_config", "build_model"]


@dataclass(frozen=True)
class ModelShape:
    family: str
    """A registry shape family (Architecture.shape): 'llama' (RMSNorm + SwiGLU) or 'gpt2' (LayerNorm +
    GELU, tied head)."""
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    kv_heads: Optional[int] = None
    """Grouped-query attention: key/value heads (None = heads)."""
    tied: bool = False
    """lm_head shares the input embedding (GPT-2; some LLaMA-family checkpoints)."""
    max_positions: int = 2048

    @property
    def n_kv_heads(self) -> int:
        return self.kv_heads or self.heads

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.n_kv_heads

    def num_parameters(self) -> int:
        """Parameter count from the shape (embedding counted once when tied)."""
        d, f, v = self.hidden, self.ffn, self.vocab
        if self.family == "llama":
            attn = d * d * 2 + d * self.kv_dim * 2
            layer = attn + 3 * d * f + 2 * d  # q,o + k,v; gate/up/down; two RMSNorm weights
            head = 0 if self.tied else v * d
            return v * d + self.layers * layer + d + head
        # GPT-2: c_attn (d x 3d + 3d), c_proj (d x d + d), c_fc (d x f + f), mlp c_proj (f x d + d), 2 LayerNorms.
        layer = 3 * d * d + 3 * d + d * d + d + 2 * d * f + f + d + 4 * d
        return v * d + self.max_positions * d + self.layers * layer + 2 * d


PRESETS: Dict[str, ModelShape] = {
    # LLaMA shapes used by GaLore and the PRAC paper (vocabulary 32000, sequence 256).
    "llama_60m": ModelShape("llama", hidden=512, layers=8, heads=8, ffn=1376, vocab=32000),
    "llama_130m": ModelShape("llama", hidden=768, layers=12, heads=12, ffn=2048, vocab=32000),
    "llama_350m": ModelShape("llama", hidden=1024, layers=24, heads=16, ffn=2736, vocab=32000),
    "llama_1b": ModelShape("llama", hidden=2048, layers=24, heads=32, ffn=5461, vocab=32000),
    "llama_7b": ModelShape("llama", hidden=4096, layers=32, heads=32, ffn=11008, vocab=32000),
    # prac-train's CPU demo: 128 wide so the GPT-2 head (50257 x 128) is most of the compute (docs/train.md).
    "llama_tiny": ModelShape("llama", hidden=128, layers=4, heads=4, ffn=352, vocab=50257, tied=True),
    "gpt2_124m": ModelShape("gpt2", hidden=768, layers=12, heads=12, ffn=3072, vocab=50257, tied=True,
                            max_positions=1024),
    "gpt2_355m": ModelShape("gpt2", hidden=1024, layers=24, heads=16, ffn=4096, vocab=50257, tied=True,
                            max_positions=1024),
}

# The registered model types the planner reads, by shape family (one table: the registry).
_TYPES = {family: tuple(t for t, a in sorted(ARCHITECTURES.items()) if a.shape == family) for family in ("llama", "gpt2")}


def get_shape(name: str) -> ModelShape:
    if name not in PRESETS:
        raise ValueError(f"model={name!r}: unknown preset; accepted are {sorted(PRESETS)} or a model config")
    return PRESETS[name]


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def shape_from_config(cfg: Any) -> ModelShape:
    """A ModelShape from a Hugging Face config object or dict (LLaMA family or GPT-2)."""
    model_type = _cfg_get(cfg, "model_type")
    if model_type in _TYPES["llama"]:
        heads = int(_cfg_get(cfg, "num_attention_heads"))
        kv = _cfg_get(cfg, "num_key_value_heads")
        return ModelShape(
            "llama",
            hidden=int(_cfg_get(cfg, "hidden_size")),
            layers=int(_cfg_get(cfg, "num_hidden_layers")),
            heads=heads,
            ffn=int(_cfg_get(cfg, "intermediate_size")),
            vocab=int(_cfg_get(cfg, "vocab_size")),
            kv_heads=None if kv is None or int(kv) == heads else int(kv),  # None = plain multi-head
            tied=bool(_cfg_get(cfg, "tie_word_embeddings", False)),
            max_positions=int(_cfg_get(cfg, "max_position_embeddings", 2048)),
        )
    if model_type in _TYPES["gpt2"]:
        d = int(_cfg_get(cfg, "n_embd"))
        return ModelShape(
            "gpt2",
            hidden=d,
            layers=int(_cfg_get(cfg, "n_layer")),
            heads=int(_cfg_get(cfg, "n_head")),
            ffn=int(_cfg_get(cfg, "n_inner") or 4 * d),
            vocab=int(_cfg_get(cfg, "vocab_size")),
            tied=True,
            max_positions=int(_cfg_get(cfg, "n_positions", 1024)),
        )
    raise ValueError(
        f"model_config.model_type={model_type!r}: accepted are {sorted(sum(_TYPES.values(), ()))} "
        f"(or a preset name: {sorted(PRESETS)})"
    )


def hf_config(shape: ModelShape, attn_implementation: str = "sdpa", dropout: float = 0.0, **extra):
    """The Hugging Face config of a shape (LlamaConfig or GPT2Config); `extra` sets more config fields.

    dropout: GPT-2's resid/embd/attn dropout (HF's default is 0.1; 0 keeps runs deterministic
    and is what the planner models). LLaMA-family models have no dropout by default.
    """
    from transformers import GPT2Config, LlamaConfig

    if shape.family == "llama":
        return LlamaConfig(hidden_size=shape.hidden, intermediate_size=shape.ffn, num_hidden_layers=shape.layers,
                           num_attention_heads=shape.heads, num_key_value_heads=shape.n_kv_heads,
                           vocab_size=shape.vocab, max_position_embeddings=shape.max_positions,
                           tie_word_embeddings=shape.tied, attn_implementation=attn_implementation, **extra)
    return GPT2Config(n_embd=shape.hidden, n_layer=shape.layers, n_head=shape.heads, n_inner=shape.ffn,
                      vocab_size=shape.vocab, n_positions=shape.max_positions, bos_token_id=0, eos_token_id=0,
                      resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                      attn_implementation=attn_implementation, **extra)


def build_model(shape: ModelShape, dtype=None, attn_implementation: str = "sdpa", dropout: float = 0.0,
                **overrides):
    """A randomly initialised HF causal LM of this shape (see `hf_config`), in training mode."""
    import torch
    from transformers import AutoModelForCausalLM

    shape = replace(shape, **overrides) if overrides else shape
    model = AutoModelForCausalLM.from_config(hf_config(shape, attn_implementation, dropout))
    if dtype is not None:
        model = model.to(dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype))
    return model.train()
