"""Tiny random-weight decoders of every family the patching tests cover (each builds in well under 1 s)."""

from __future__ import annotations

import torch

# hidden 64, 2 layers, 4 heads (2 KV heads where the family has GQA), ffn 128, vocab 256; no dropout.
_COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64)

FAMILIES = {
    "llama": ("LlamaConfig", _COMMON),
    "mistral": ("MistralConfig", _COMMON),
    "qwen2": ("Qwen2Config", _COMMON),
    "qwen3": ("Qwen3Config", dict(_COMMON, head_dim=16)),
    "gpt2": ("GPT2Config", dict(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0,
                                embd_pdrop=0.0, attn_pdrop=0.0)),
    "gemma2": ("Gemma2Config", dict(_COMMON, head_dim=16, attn_implementation="eager")),
    "gemma3_text": ("Gemma3TextConfig", dict(_COMMON, head_dim=16)),
    "olmo2": ("Olmo2Config", _COMMON),
    "phi3": ("Phi3Config", dict(_COMMON, pad_token_id=0)),
    "gpt_neox": ("GPTNeoXConfig", dict(_COMMON, hidden_dropout=0.0, attention_dropout=0.0)),
    "falcon": ("FalconConfig", dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    new_decoder_architecture=True, num_kv_heads=2)),
    "mixtral": ("MixtralConfig", dict(_COMMON, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": ("Qwen2MoeConfig", dict(_COMMON, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                                         shared_expert_intermediate_size=128, decoder_sparse_step=1)),
}

MOE = ("mixtral", "qwen2_moe")


def build(family: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """A causal LM of `family` with random weights, in training mode (norm weights perturbed off their init)."""
    import transformers

    cls_name, kwargs = FAMILIES[family]
    kwargs = dict(kwargs)
    attn = kwargs.pop("attn_implementation", "sdpa")
    cfg = getattr(transformers, cls_name)(**kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)
    with torch.no_grad():  # norm weights start at 1 (or 0 for Gemma's 1 + w): move them so a wrong formula shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype).train()


def batch(model, batch_size: int = 2, seq_len: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}
