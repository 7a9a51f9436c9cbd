"""Tiny random-weight decoders of every family the patching tests cover (each builds in well under 1 s).

Used by tests/patching and benchmarks/family_memory.py (with a larger width), so the test and the measurement build the
same models.
"""

from __future__ import annotations

import torch


def _kwargs(family: str, width: int) -> dict:
    """Config fields for `width` (hidden; 4 heads, 2 KV heads where the family has GQA; ffn 2x; 2 layers)."""
    common = dict(vocab_size=256, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    head_dim = dict(common, head_dim=width // 4)
    return {
        "llama": common,
        "mistral": common,
        "qwen2": common,
        "qwen3": head_dim,
        "gpt2": dict(vocab_size=256, n_embd=width, n_layer=2, n_head=4, n_positions=512, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0),
        "gemma2": head_dim,
        "gemma3_text": head_dim,
        "olmo2": common,
        "phi3": dict(common, pad_token_id=0),
        "gpt_neox": dict(common, hidden_dropout=0.0, attention_dropout=0.0),
        "falcon": dict(vocab_size=256, hidden_size=width, num_hidden_layers=2, num_attention_heads=4,
                       new_decoder_architecture=True, num_kv_heads=2),
        "mixtral": dict(common, num_local_experts=4, num_experts_per_tok=2),
        "qwen2_moe": dict(common, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=width,
                          shared_expert_intermediate_size=2 * width, decoder_sparse_step=1),
    }[family]


CONFIG_CLASSES = {
    "llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config",
    "gpt2": "GPT2Config", "gemma2": "Gemma2Config", "gemma3_text": "Gemma3TextConfig", "olmo2": "Olmo2Config",
    "phi3": "Phi3Config", "gpt_neox": "GPTNeoXConfig", "falcon": "FalconConfig", "mixtral": "MixtralConfig",
    "qwen2_moe": "Qwen2MoeConfig",
}
FAMILIES = tuple(CONFIG_CLASSES)
MOE = ("mixtral", "qwen2_moe")
# Gemma2's soft-capped attention needs the eager kernel; the others run SDPA, as in training.
ATTENTION = {"gemma2": "eager"}


def build(family: str, dtype: torch.dtype = torch.float32, seed: int = 0, width: int = 64):
    """A causal LM of `family` with random weights, in training mode (norm weights moved off their init)."""
    import transformers
    from transformers.utils import logging

    logging.set_verbosity_error()
    cfg = getattr(transformers, CONFIG_CLASSES[family])(**_kwargs(family, width))
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=ATTENTION.get(family, "sdpa"))
    with torch.no_grad():  # norm weights start at 1 (or 0 for Gemma's 1 + w): move them so a wrong formula shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype).train()


def batch(model, batch_size: int = 2, seq_len: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}
