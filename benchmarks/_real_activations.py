"""Real activations for the kernel benchmarks: a small LLaMA trained briefly on WikiText-2.

Shared by benchmarks/quality/subspace_refresh.py (and usable from tests): the spectra of
activations of a trained model decay very differently from Gaussian noise, so the
principal-subspace refresh is measured on these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch

_ROOT = Path(__file__).resolve().parents[1]
_DATA_DIRS = (_ROOT / "prac_dist" / "data", _ROOT.parent / "shared" / "data")


def wikitext_tokens(split: str = "valid", limit: int = 200_000) -> torch.Tensor:
    """GPT-2 token ids of the bundled WikiText-2 split (prac_dist/data, else ../shared/data)."""
    from tokenizers import ByteLevelBPETokenizer

    for base in _DATA_DIRS:
        if (base / "wikitext-2" / f"{split}.txt").exists():
            break
    else:
        raise FileNotFoundError(f"wikitext-2/{split}.txt in none of {[str(d) for d in _DATA_DIRS]}")
    tok = ByteLevelBPETokenizer(str(base / "gpt2-tokenizer" / "vocab.json"), str(base / "gpt2-tokenizer" / "merges.txt"))
    text = (base / "wikitext-2" / f"{split}.txt").read_text(encoding="utf-8")
    ids = tok.encode(text[: limit * 6]).ids[:limit]
    return torch.tensor(ids, dtype=torch.long)


def trained_llama_activations(hidden: int, ffn: int, layers: int, steps: int, seq: int, batch: int,
                              n_tokens: int, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Train a LlamaForCausalLM for `steps` AdamW steps on WikiText-2 valid, then return the
    float32 inputs [n_tokens, width] of every linear layer of the last decoder layer
    (attention input, o_proj input, MLP input, down_proj input) on held-out test text."""
    from prac_dist.models import ModelShape

    from benchmarks._harness import llama

    torch.manual_seed(seed)
    heads = max(1, hidden // 64)  # 64-wide heads; the GPT-2 tokenizer's vocabulary, tied head
    model = llama(ModelShape("llama", hidden=hidden, layers=layers, heads=heads, ffn=ffn, vocab=50257, tied=True,
                             max_positions=seq))
    train = wikitext_tokens("valid")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, train.numel() - seq - 1, (batch,), generator=gen)
        ids = torch.stack([train[s:s + seq] for s in starts])
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    test = wikitext_tokens("test", limit=n_tokens + seq)
    ids = test[: (n_tokens // seq) * seq].reshape(-1, seq)
    layer = model.model.layers[-1]
    captured: Dict[str, torch.Tensor] = {}
    hooks = [getattr(layer.self_attn, "q_proj"), layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.down_proj]
    names = ["attn_in", "o_proj_in", "mlp_in", "down_proj_in"]
    handles = [m.register_forward_pre_hook(lambda m, a, name=name: captured.__setitem__(name, a[0].detach()))
               for m, name in zip(hooks, names)]
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    out = {k: v.reshape(-1, v.shape[-1]).float() for k, v in captured.items()}
    out["final_loss"] = torch.tensor(float(loss.detach()))
    return out
