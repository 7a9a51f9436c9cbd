"""The randomized principal-subspace refresh vs the exact eigenvectors, on real activations.

Activations come from a tiny LlamaForCausalLM (hidden 64, ffn 172, 2 layers) trained
for a few AdamW steps on the bundled WikiText-2 text, then run on held-out text: their
spectra decay like a real model's, unlike Gaussian test matrices.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prac_dist.kernels import captured_energy, principal_basis, randomized_principal_basis


def exact_principal_basis(x, r):
    """The exact refresh production runs (Compressor with solver='exact'), basis only."""
    return principal_basis(x, r)[0]

DATA = Path(__file__).resolve().parents[2] / "prac_dist" / "data"


def _tokens(split: str, limit: int) -> torch.Tensor:
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer(str(DATA / "gpt2-tokenizer" / "vocab.json"), str(DATA / "gpt2-tokenizer" / "merges.txt"))
    text = (DATA / "wikitext-2" / f"{split}.txt").read_text(encoding="utf-8")
    return torch.tensor(tok.encode(text[: limit * 6]).ids[:limit])


@pytest.fixture(scope="module")
def activations():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50257, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg)
    train = _tokens("valid", 8192).reshape(-1, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(8):  # 8 steps x 4 x 64 tokens: enough to leave the random init
        ids = train[4 * step: 4 * step + 4]
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    captured = {}
    layer = model.model.layers[-1]
    mods = {"attn_in": layer.self_attn.q_proj, "mlp_in": layer.mlp.gate_proj, "down_proj_in": layer.mlp.down_proj}
    handles = [m.register_forward_pre_hook(lambda m, a, k=k: captured.__setitem__(k, a[0].detach()))
               for k, m in mods.items()]
    with torch.no_grad():
        model(input_ids=_tokens("test", 1024).reshape(-1, 64))
    for h in handles:
        h.remove()
    return {k: v.reshape(-1, v.shape[-1]).float() for k, v in captured.items()}


@pytest.mark.parametrize("name", ["attn_in", "mlp_in", "down_proj_in"])
@pytest.mark.parametrize("r", [1, 5, 33, "0.3n"])
def test_randomized_captures_99_percent_of_exact(activations, name, r):
    x = activations[name]  # [1024, n], n = 64 or 172
    n = x.shape[1]
    r = int(0.3 * n) if r == "0.3n" else r
    exact = captured_energy(x, exact_principal_basis(x, r))
    cold = randomized_principal_basis(x, r)
    assert cold.shape == (n, r) and cold.dtype == torch.float32
    torch.testing.assert_close(cold.t() @ cold, torch.eye(r), rtol=0, atol=1e-5)  # orthonormal
    assert captured_energy(x, cold) >= 0.99 * exact
    # Warm start from the basis of another batch (what a refresh after T1 steps sees).
    prev = randomized_principal_basis(x[: x.shape[0] // 2], r)
    warm = randomized_principal_basis(x[x.shape[0] // 2:], r, q_prev=prev, iters=1)
    half = x[x.shape[0] // 2:]
    assert captured_energy(half, warm) >= 0.99 * captured_energy(half, exact_principal_basis(half, r))
    # Power: a random r-dim subspace captures about r/n of the energy, far below the bar.
    rand_q = torch.linalg.qr(torch.randn(n, r, generator=torch.Generator().manual_seed(0))).Q
    assert captured_energy(x, rand_q) < 0.99 * exact


def test_full_rank_and_zero_rank():
    x = torch.randn(50, 12, generator=torch.Generator().manual_seed(1))
    q = randomized_principal_basis(x, 12)
    assert float(captured_energy(x, q)) == pytest.approx(1.0, abs=1e-5)
    assert randomized_principal_basis(x, 0).shape == (12, 0)
    assert float(captured_energy(torch.zeros(3, 12), q)) == 1.0


def test_bad_arguments():
    x = torch.randn(8, 6)
    with pytest.raises(ValueError, match="r=7"):
        randomized_principal_basis(x, 7)
    with pytest.raises(ValueError, match="iters=0"):
        randomized_principal_basis(x, 2, iters=0)
    with pytest.raises(ValueError, match="oversample=-1"):
        randomized_principal_basis(x, 2, oversample=-1)
    with pytest.raises(ValueError, match="q_prev: expected"):
        randomized_principal_basis(x, 2, q_prev=torch.randn(5, 2))
