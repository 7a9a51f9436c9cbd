"""Models for prac-train: LLaMA presets with the paper's shapes, or any local Hugging Face causal LM.

The presets are GaLore's LLaMA configs (the PRAC paper pre-trains the same
shapes on C4): vocabulary 32000 (the T5 tokenizer), SwiGLU, RMSNorm, RoPE.
`llama_tiny` is the CPU demo: the GPT-2 vocabulary of the bundled tokenizer and a
width that trains a few hundred steps of WikiText-2 in minutes on 2 cores.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Dict

import torch
from torch import nn

from prac_dist.models.shapes import PRESETS as _SHAPES
from prac_dist.models.shapes import ModelShape, hf_config
from prac_dist.train import meta_init
from prac_dist.train.config import ConfigError, ModelConfig

__all__ = ["PRESETS", "build_model", "check_vocab"]

# The registry's one shape table, LLaMA shapes only (prac-train builds LlamaForCausalLM presets).
PRESETS: Dict[str, ModelShape] = {name: s for name, s in _SHAPES.items() if s.family == "llama"}


def build_model(cfg: ModelConfig, seq_len: int, seed: int, materialize: bool = True) -> nn.Module:
    """A float32 causal LM on CPU; the same seed gives the same initial weights (baseline vs PRAC).

    Presets are built with their parameters on the meta device and initialised per parameter
    (prac_dist.train.meta_init): materialize=False returns them still on meta, for a backend that
    shards first and then calls meta_init.materialize (each rank allocates its shard only); the
    weights are the same bit for bit either way. Local models (model.name_or_path) are built by
    Hugging Face, on CPU, whatever `materialize` says.
    """
    torch.manual_seed(seed)
    if cfg.preset is not None:
        return _build_preset(cfg, seq_len, seed, materialize)
    return _build_local(cfg, seq_len)


def _build_preset(cfg: ModelConfig, seq_len: int, seed: int, materialize: bool) -> nn.Module:
    from transformers import LlamaForCausalLM

    if cfg.preset not in PRESETS:
        raise ConfigError(f"model.preset={cfg.preset!r}: unknown preset; accepted are {sorted(PRESETS)}")
    p = PRESETS[cfg.preset]
    p = replace(p, vocab=cfg.vocab_size or p.vocab, max_positions=max(p.max_positions, seq_len))
    llama_config = hf_config(p, cfg.attn_implementation, rms_norm_eps=1e-6, attention_dropout=0.0)
    _apply_overrides(llama_config, cfg.overrides)
    llama_config._attn_implementation = cfg.attn_implementation
    with meta_init.params_on_meta():
        model = LlamaForCausalLM(llama_config)
    meta_init.record_init(model, seed, std=llama_config.initializer_range)
    if materialize:
        meta_init.materialize(model, torch.device("cpu"))
    return model


def _build_local(cfg: ModelConfig, seq_len: int) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(cfg.name_or_path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.name_or_path={cfg.name_or_path!r}: no config.json there; "
                          f"accepted is a local Hugging Face model directory")
    local_config = AutoConfig.from_pretrained(path)
    if cfg.vocab_size is not None:
        local_config.vocab_size = cfg.vocab_size
    _apply_overrides(local_config, cfg.overrides)
    max_pos = getattr(local_config, "max_position_embeddings", None) or getattr(local_config, "n_positions", None)
    if max_pos is not None and seq_len > max_pos:
        raise ConfigError(f"data.seq_len={seq_len}: the model at {cfg.name_or_path} accepts at most {max_pos} tokens")
    kwargs = {"attn_implementation": cfg.attn_implementation}
    try:
        if cfg.from_pretrained:
            return AutoModelForCausalLM.from_pretrained(path, config=local_config, dtype=torch.float32, **kwargs)
        return AutoModelForCausalLM.from_config(local_config, **kwargs)
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
