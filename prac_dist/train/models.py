"""Models for prac-train: LLaMA presets with the paper's shapes, or any local Hugging Face causal LM.

The presets are GaLore's LLaMA configs (the PRAC paper pre-trains the same
shapes on C4): vocabulary 32000 (the T5 tokenizer), SwiGLU, RMSNorm, RoPE.
`llama_tiny` is the CPU demo: the GPT-2 vocabulary of the bundled tokenizer and a
width that trains a few hundred steps of WikiText-2 in minutes on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import torch
from torch import nn

from prac_dist.train.config import ConfigError, ModelConfig

__all__ = ["LlamaPreset", "PRESETS", "build_model", "check_vocab"]


@dataclass(frozen=True)
class LlamaPreset:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int = 32000
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 1024

    def n_params(self) -> int:
        d, f, v, n = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_hidden_layers
        per_layer = 4 * d * d + 3 * d * f + 2 * d
        heads = v * d * (1 if self.tie_word_embeddings else 2)
        return n * per_layer + heads + d


PRESETS: Dict[str, LlamaPreset] = {
    # The CPU demo: 128 wide so the GPT-2 head (50257 x 128) is most of the compute; see docs/train.md.
    "llama_tiny": LlamaPreset(128, 4, 4, 352, vocab_size=50257, tie_word_embeddings=True),
    "llama_60m": LlamaPreset(512, 8, 8, 1376),
    "llama_130m": LlamaPreset(768, 12, 12, 2048),
    "llama_350m": LlamaPreset(1024, 24, 16, 2736),
    "llama_1b": LlamaPreset(2048, 24, 32, 5461),
    "llama_7b": LlamaPreset(4096, 32, 32, 11008),
}


def build_model(cfg: ModelConfig, seq_len: int, seed: int) -> nn.Module:
    """A float32 causal LM on CPU; the same seed gives the same initial weights (baseline vs PRAC)."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if cfg.preset is not None:
        if cfg.preset not in PRESETS:
            raise ConfigError(f"model.preset={cfg.preset!r}: unknown preset; accepted are {sorted(PRESETS)}")
        p = PRESETS[cfg.preset]
        hf_config = LlamaConfig(
            vocab_size=cfg.vocab_size or p.vocab_size,
            hidden_size=p.hidden_size,
            intermediate_size=p.intermediate_size,
            num_hidden_layers=p.num_hidden_layers,
            num_attention_heads=p.num_attention_heads,
            num_key_value_heads=p.num_attention_heads,
            max_position_embeddings=max(p.max_position_embeddings, seq_len),
            tie_word_embeddings=p.tie_word_embeddings,
            rms_norm_eps=1e-6,
            attention_dropout=0.0,
        )
        _apply_overrides(hf_config, cfg.overrides)
        hf_config._attn_implementation = cfg.attn_implementation
        return LlamaForCausalLM(hf_config)

    path = Path(cfg.name_or_path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.name_or_path={cfg.name_or_path!r}: no config.json there; "
                          f"accepted is a local Hugging Face model directory")
    hf_config = AutoConfig.from_pretrained(path)
    if cfg.vocab_size is not None:
        hf_config.vocab_size = cfg.vocab_size
    _apply_overrides(hf_config, cfg.overrides)
    max_pos = getattr(hf_config, "max_position_embeddings", None) or getattr(hf_config, "n_positions", None)
    if max_pos is not None and seq_len > max_pos:
        raise ConfigError(f"data.seq_len={seq_len}: the model at {cfg.name_or_path} accepts at most {max_pos} tokens")
    kwargs = {"attn_implementation": cfg.attn_implementation}
    try:
        if cfg.from_pretrained:
            return AutoModelForCausalLM.from_pretrained(path, config=hf_config, dtype=torch.float32, **kwargs)
        return AutoModelForCausalLM.from_config(hf_config, **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.name_or_path={cfg.name_or_path!r}: cannot load it ({_first_line(exc)})") from None


def check_vocab(model: nn.Module, tokenizer_vocab: int, tokenizer_name: str) -> None:
    """A token id >= the embedding size would index out of range on the first batch: fail before training."""
    model_vocab = model.get_input_embeddings().weight.shape[0]
    if tokenizer_vocab > model_vocab:
        raise ConfigError(
            f"data.tokenizer={tokenizer_name!r} has {tokenizer_vocab} tokens but the model's vocabulary is "
            f"{model_vocab}: use a tokenizer that fits or set model.vocab_size >= {tokenizer_vocab}"
        )


def _apply_overrides(hf_config, overrides) -> None:
    known = hf_config.to_dict()
    for key, value in overrides.items():
        if key not in known:
            raise ConfigError(f"model.overrides.{key}: not a field of {type(hf_config).__name__}")
        setattr(hf_config, key, value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
