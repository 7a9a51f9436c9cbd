"""Tiny random-weight decoders of every family the patching tests cover (each builds in well under 1 s).

Used by tests/patching and benchmarks/memory/family_memory.py (with a larger width), so the test and the measurement build the
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


# ----------------------------------------------------------------------------- decoders outside Hugging Face
# Each is built as its users build it and called as they call it: (model, loss of a batch, decoder blocks).
OUTSIDE_HF = ("nanogpt", "litgpt", "torchtitan_llama3", "torchtitan_qwen3")


class _NanoLayerNorm(torch.nn.Module):
    """nanoGPT's LayerNorm: optional bias, eps fixed in the code (no eps attribute to read)."""

    def __init__(self, width: int, bias: bool):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(width))
        self.bias = torch.nn.Parameter(torch.zeros(width)) if bias else None

    def forward(self, x):
        return torch.nn.functional.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class _NanoAttention(torch.nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_attn = torch.nn.Linear(width, 3 * width)  # q, k, v fused in one linear
        self.c_proj = torch.nn.Linear(width, width)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in self.c_attn(x).split(c, dim=2))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class _NanoMLP(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.c_fc = torch.nn.Linear(width, 4 * width)
        self.gelu = torch.nn.GELU()
        self.c_proj = torch.nn.Linear(4 * width, width)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class _NanoBlock(torch.nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1, self.attn = _NanoLayerNorm(width, True), _NanoAttention(width, heads)
        self.ln_2, self.mlp = _NanoLayerNorm(width, True), _NanoMLP(width)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(torch.nn.Module):
    """A decoder in nanoGPT's style: learned positions, pre-LN blocks with a fused c_attn, a GELU MLP,
    a head tied to the token embedding; `forward(idx, targets=None)` returns (logits, loss)."""

    def __init__(self, vocab_size: int = 256, width: int = 64, layers: int = 2, heads: int = 4, block_size: int = 512):
        super().__init__()
        self.transformer = torch.nn.ModuleDict(dict(
            wte=torch.nn.Embedding(vocab_size, width), wpe=torch.nn.Embedding(block_size, width),
            h=torch.nn.ModuleList(_NanoBlock(width, heads) for _ in range(layers)), ln_f=_NanoLayerNorm(width, True)))
        self.lm_head = torch.nn.Linear(width, vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, idx, targets=None):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


def torchtitan_spec(name: str, layers: int = 2, converters=None):
    """torchtitan's registry spec of the Llama3 or Qwen3 debug model (dim 256), first `layers` blocks, with
    torchtitan's own SDPA inner attention in place of FlexAttention, whose backward needs a GPU."""
    import importlib

    from torchtitan.models.common.attention import ScaledDotProductAttention

    spec = importlib.import_module(f"torchtitan.models.{name}").model_registry("debugmodel", converters=converters)
    spec.model.layers = spec.model.layers[:layers]
    for block in spec.model.layers:
        block.attention.inner_attention = ScaledDotProductAttention.Config()
    return spec


def build_torchtitan(name: str, seed: int = 0):
    """The model of torchtitan_spec built on CPU and initialised by torchtitan (init_states)."""
    spec = torchtitan_spec(name)
    torch.manual_seed(seed)
    model = spec.model.build()
    model.init_states(buffer_device=None)
    return model


def build_outside(family: str, dtype: torch.dtype = torch.float32, seed: int = 0, width: int = 64):
    """(model in training mode, loss(model, ids), decoder blocks) for a family of OUTSIDE_HF."""
    torch.manual_seed(seed)
    if family == "nanogpt":
        model = NanoGPT(width=width)
        loss = lambda m, ids: m(ids[:, :-1], ids[:, 1:])[1]  # noqa: E731
        blocks = list(model.transformer.h)
    elif family == "litgpt":
        from litgpt.config import Config
        from litgpt.model import GPT

        cfg = Config(block_size=512, vocab_size=256, padded_vocab_size=256, n_layer=2, n_head=4, n_query_groups=2,
                     n_embd=width, rotary_percentage=1.0, parallel_residual=False, bias=False,
                     norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP", intermediate_size=2 * width)
        model = GPT(cfg)
        loss = lambda m, ids: torch.nn.functional.cross_entropy(  # noqa: E731
            m(ids[:, :-1]).flatten(0, 1).float(), ids[:, 1:].flatten())
        blocks = list(model.transformer.h)
    else:  # torchtitan's debug model keeps its own width (256)
        model = build_torchtitan(family.split("_", 1)[1], seed=seed)
        loss = lambda m, ids: torch.nn.functional.cross_entropy(  # noqa: E731
            m(ids[:, :-1]).flatten(0, 1).float(), ids[:, 1:].flatten())
        blocks = list(model.layers.values())
    with torch.no_grad():  # norm weights start at 1: move them so a wrong formula shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype).train(), loss, blocks
