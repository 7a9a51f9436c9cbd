"""Where the math is exact, PRAC must be too.

With r1 + r2 = n the bases span R^n and c = 1, so dW = dYᵀ X Q Qᵀ = dYᵀ X: the gradient equals the
unpatched model's up to float32 rounding. The remaining difference comes from rounding Z = X Q and
expanding back, amplified where dYᵀX cancels, and (with compress_nonlinear) from the norm's input
going through the same float32 projection (the default randomized nonlinear refresh doubles that
rounding: reconstruction error 9.5e-5 vs 4.6e-5 of values up to 32). Measured: at most 1.2e-3 of the
largest gradient entry (LLaMA, nonlinear on, randomized refresh); the bound is 2e-3, while any real
error (a wrong scale c, a missing basis vector) is O(0.1-1).
"""

import copy

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from prac_dist import PRACConfig, apply_prac, is_prac_model, load_prac_state_dict, prac_state_dict, remove_prac, step

FULL = dict(principal_ratio=0.5, random_ratio=0.5, nonlinear_principal_ratio=0.5, nonlinear_random_ratio=0.5,
            linear_storage="project", nonlinear_storage="project", storage_bits=16,
            fused_loss=False)


def grads(model, x):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_grads_close(ref, got, rel=2e-3):
    assert ref.keys() == got.keys()
    for name in ref:
        scale = ref[name].abs().max().clamp_min(1e-12)
        err = (ref[name] - got[name]).abs().max() / scale
        assert err < rel, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gpt2"])
@pytest.mark.parametrize("nonlinear", [False, True])
def test_full_rank_gradients_are_exact(arch, nonlinear, make_llama, make_gpt2):
    ref = make_gpt2() if arch == "gpt2" else make_llama(model_type=arch)
    model = apply_prac(copy.deepcopy(ref), PRACConfig(compress_nonlinear=nonlinear, **FULL))
    x = torch.randint(0, 128, (2, 16))
    loss_ref, g_ref = grads(ref, x)
    loss, g = grads(model, x)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=1e-6)
    assert_grads_close(g_ref, g)


def test_default_ratios_change_weight_grads_not_input_grads(make_llama):
    """Only dW is estimated: the loss and every non-linear-weight gradient stay exact."""
    ref = make_llama()
    model = apply_prac(copy.deepcopy(ref), PRACConfig(compress_nonlinear=False, fused_loss=False))
    # 256 tokens > ffn width 160: with fewer, X has rank <= N <= r1 and PRAC is (rightly) exact.
    x = torch.randint(0, 128, (4, 64))
    loss_ref, g_ref = grads(ref, x)
    loss, g = grads(model, x)
    torch.testing.assert_close(loss, loss_ref)
    compressed = [n for n in g if any(k in n for k in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj",
                                                        "down_proj"))]
    assert len(compressed) == 12
    assert all((g[n] - g_ref[n]).abs().max() > 1e-6 for n in compressed)
    # The embedding gradient is reached only through exact dX of every layer above it: still exact
    # up to the float32 rounding of the different op order (the estimated dW are not on its path).
    torch.testing.assert_close(g["model.embed_tokens.weight"], g_ref["model.embed_tokens.weight"],
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g["model.layers.0.self_attn.o_proj.weight"],
                               g_ref["model.layers.0.self_attn.o_proj.weight"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("nonlinear", [False, True])
def test_bf16_logits_match_within_rounding(nonlinear, make_llama):
    ref = make_llama(hidden=128, ffn=352).to(torch.bfloat16)
    model = apply_prac(copy.deepcopy(ref), PRACConfig(compress_nonlinear=nonlinear, fused_loss=False))
    x = torch.randint(0, 128, (2, 32))
    with torch.no_grad():
        want = ref(input_ids=x).logits.float()
    got = model(input_ids=x).logits.float()  # a training-mode forward: PRAC compresses here
    # bf16 keeps 8 mantissa bits: 2^-8 relative per rounding, a few roundings deep.
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_remove_restores_modules_and_parameters(make_llama, make_gpt2):
    for model in (make_llama(), make_gpt2()):
        params = {n: p for n, p in model.named_parameters()}
        before = {n: type(m) for n, m in model.named_modules()}
        keys = list(model.state_dict())
        apply_prac(model, PRACConfig(fused_loss=False))
        assert is_prac_model(model)
        assert list(model.state_dict()) == keys
        assert all(p is params[n] for n, p in model.named_parameters())
        remove_prac(model)
        assert not is_prac_model(model)
        assert {n: type(m) for n, m in model.named_modules()} == before
        assert all(p is params[n] for n, p in model.named_parameters())


def test_non_reentrant_checkpoint_and_autocast(make_llama):
    ref = make_llama()
    model = apply_prac(copy.deepcopy(ref), PRACConfig(compress_nonlinear=True, **FULL))
    for m in (ref, model):
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m.train()
    x = torch.randint(0, 128, (2, 16))
    _, g_ref = grads(ref, x)
    _, g = grads(model, x)
    assert_grads_close(g_ref, g)  # the recompute reused this step's bases
    # Explicit checkpoint around a decoder layer, under bf16 autocast, at the default ratios:
    # the forward is exact, so it must match the unpatched layer under the same autocast.
    plain = make_llama()
    model2 = apply_prac(copy.deepcopy(plain), PRACConfig(fused_loss=False))
    layer = model2.model.layers[0]
    h = torch.randn(2, 16, 64, requires_grad=True)
    pos = model2.model.rotary_emb(h, torch.arange(16)[None])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = checkpoint(lambda t: layer(t, position_embeddings=pos), h, use_reentrant=False)
        out = out[0] if isinstance(out, tuple) else out
        with torch.no_grad():
            want = plain.model.layers[0](h, position_embeddings=pos)
            want = want[0] if isinstance(want, tuple) else want
    torch.testing.assert_close(out, want, rtol=2e-2, atol=2e-2)
    out.float().pow(2).mean().backward()
    assert h.grad is not None and torch.isfinite(h.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_state_dict_resume_is_exact(make_llama):
    cfg = PRACConfig(principal_update_interval=2, random_update_interval=1, fused_loss=False)
    data = [torch.randint(0, 128, (2, 16)) for _ in range(8)]

    def train(model, opt, batches):
        losses = []
        for x in batches:
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            step(model)
            losses.append(loss.item())
        return losses

    full = apply_prac(make_llama(), cfg)
    opt = torch.optim.AdamW(full.parameters(), lr=1e-2)
    want = train(full, opt, data)

    first = apply_prac(make_llama(), cfg)
    opt1 = torch.optim.AdamW(first.parameters(), lr=1e-2)
    got = train(first, opt1, data[:3])
    saved = copy.deepcopy((first.state_dict(), opt1.state_dict(), prac_state_dict(first)))
    resumed = apply_prac(make_llama(seed=123), cfg)
    opt2 = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    resumed.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    load_prac_state_dict(resumed, saved[2])
    got += train(resumed, opt2, data[3:])
    assert got == want  # bit for bit


def test_random_subspaces_differ_across_ranks(make_llama, monkeypatch):
    x = torch.randint(0, 128, (2, 16))

    def q2_for(rank, per_rank):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")  # a launcher sets both (prac_dist.distributed reads them as a pair)
        model = apply_prac(make_llama(), PRACConfig(per_rank_random=per_rank, fused_loss=False))
        model(input_ids=x, labels=x).loss.backward()
        return prac_state_dict(model)["compressors"]["model.layers.0.self_attn.q_proj+k_proj+v_proj"]

    r0, r1 = q2_for(0, True), q2_for(1, True)
    torch.testing.assert_close(r0["q1"], r1["q1"])  # same data here -> same principal basis
    assert (r0["q2"] - r1["q2"]).abs().max() > 0.1
    torch.testing.assert_close(q2_for(0, False)["q2"], q2_for(1, False)["q2"])


def test_eval_forward_leaves_state_alone(make_llama):
    model = apply_prac(make_llama(), PRACConfig(fused_loss=False))
    with torch.no_grad():
        model(input_ids=torch.randint(0, 128, (1, 8)))
    assert all(c.q1 is None for c in model._prac_state.compressors.values())
