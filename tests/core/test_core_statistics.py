"""PRAC's weight gradient is unbiased, and its variance is far below a pure random projection's.

Both tests use fixed seeds (PRAC draws Q2 from seeded generators), so they are deterministic; the
tolerances below are chosen from the statistics, not tuned to the seeds.
"""

import copy

import torch
from torch import nn

from prac_dist import PRACConfig, apply_prac, step

COMPRESSED = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj")


def _weight_grads(model, x):
    model.zero_grad(set_to_none=True)
    model(input_ids=x, labels=x).loss.backward()
    return torch.cat([p.grad.flatten() for n, p in model.named_parameters() if any(k in n for k in COMPRESSED)])


def test_mean_gradient_converges_like_one_over_sqrt_k(make_llama):
    """E[dW~] = dW: the mean of K estimates has squared error tr(Var)/K.

    With random_update_interval=1 each step redraws Q2 (Q1 fixed), so the K estimates on one fixed
    batch are i.i.d. Checks: (1) at K=256 the squared error is within 2x of its expectation v/K,
    v = the mean per-draw squared error (it is a sum of ~10^4 weighted chi-square terms, whose
    ratio to its mean concentrates near 1; a bias b would add ‖b‖² that does not shrink with K);
    (2) it shrinks ~4x from K=64 to K=256 (we accept > 2.5x); (3) the mean is within 10% of dW.
    """
    ref = make_llama(layers=1)  # the estimate is per layer: one decoder layer shows it at half the cost
    model = apply_prac(copy.deepcopy(ref), PRACConfig(compress_nonlinear=False, random_update_interval=1,
                                                       principal_update_interval=10**6, fused_loss=False))
    x = torch.randint(0, 128, (4, 64))
    exact = _weight_grads(ref, x)
    total = torch.zeros_like(exact)
    per_draw = 0.0
    errs = {}
    for k in range(1, 257):
        g = _weight_grads(model, x)
        step(model)
        total += g
        per_draw += float((g - exact).pow(2).sum())
        if k in (64, 256):
            errs[k] = float((total / k - exact).pow(2).sum())
    v = per_draw / 256
    assert errs[256] < 2.0 * v / 256, (errs, v)
    assert errs[64] / errs[256] > 2.5, errs
    assert errs[256] ** 0.5 < 0.1 * float(exact.norm())


class _Proj(nn.Module):
    def __init__(self, n=64, out=32):
        super().__init__()
        self.proj = nn.Linear(n, out, bias=False)

    def forward(self, x):
        return self.proj(x)


def _grad_variance(x, dy, cfg, draws=200):
    torch.manual_seed(0)
    model = apply_prac(_Proj(), cfg)
    exact = dy.t() @ x
    sq = 0.0
    for _ in range(draws):
        model.zero_grad(set_to_none=True)
        model(x).backward(dy)
        step(model)
        sq += float((model.proj.weight.grad - exact).pow(2).sum())
    return sq / draws


def test_principal_subspace_cuts_variance_tenfold_on_low_rank_activations():
    """Activations with a rank-8 signal plus 1% noise (the structure real activations have).

    PRAC's variance is bounded by (c - 1)‖X - XQ1Q1ᵀ‖² (the noise), a pure random projection's is
    (n/r - 1)‖X‖²-like: the ratio is ~10^3 here; the issue asks for at least 10x.
    """
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(512, 8, generator=gen) @ torch.randn(8, 64, generator=gen)
    x = x + 0.01 * torch.randn(512, 64, generator=gen)
    dy = torch.randn(512, 32, generator=gen)
    common = dict(random_update_interval=1, principal_update_interval=10**6, target_modules=["proj"],
                  linear_storage="project", fused_loss=False)
    prac = _grad_variance(x, dy, PRACConfig(principal_ratio=0.3, random_ratio=0.3, **common))
    rand = _grad_variance(x, dy, PRACConfig(principal_ratio=0.0, random_ratio=0.6, **common))
    assert rand > 10 * prac, (prac, rand)


def test_adaptive_rank_keeps_bytes_and_lowers_the_variance_bound(make_llama):
    """min_variance picks, per layer, the r1 minimising (n - R)/(R - r1)·tail(r1) at fixed R = r1 + r2."""
    from prac_dist.core.subspace import choose_r1

    lam = torch.tensor([100.0, 50.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    tail = lambda r: float(lam[r:].sum())
    bound = lambda r: (10 - 4) / (4 - r) * tail(r)
    best = choose_r1(lam, budget=4, policy="min_variance", energy=0.9)
    assert best == min(range(4), key=bound) == 2
    assert choose_r1(lam, budget=4, policy="energy", energy=0.9) == 2  # 150/158 >= 0.9
    assert choose_r1(lam, budget=4, policy="energy", energy=0.999) == 3  # capped: r2 >= 1
    model = apply_prac(make_llama(), PRACConfig(adaptive_rank="min_variance", fused_loss=False,
                                                linear_storage="project", nonlinear_storage="project"))
    x = torch.randint(0, 128, (4, 64))
    model(input_ids=x, labels=x).loss.backward()
    for comp in model._prac_state.compressors.values():
        assert comp.r1 + comp.r2 == comp.budget and comp.r2 >= 1
        assert comp.q1.shape == (comp.n, comp.r1) and comp.q2.shape == (comp.n, comp.r2)


def test_adaptive_rank_re_chooses_r1_after_choosing_zero():
    # An isotropic batch makes min_variance pick r1 = 0 (tail(r) ∝ n - r: the bound grows with r);
    # a rank-2 batch at the next refresh must get principal directions again, not stay at r1 = 0.
    from prac_dist.core.subspace import Compressor

    gen = torch.Generator().manual_seed(0)
    comp = Compressor("c", 16, 4, 4, seed=0, per_rank_random=False, adaptive="min_variance", t1=1, t2=1)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen))
    comp.refresh(torch.randn(4096, 16, generator=gen) @ q)  # orthogonal mix of white noise: flat spectrum
    assert (comp.r1, comp.r2) == (0, 8)
    comp.mark(1)
    low_rank = torch.randn(256, 2, generator=gen) @ torch.randn(2, 16, generator=gen)
    comp.refresh(low_rank + 1e-3 * torch.randn(256, 16, generator=gen))
    assert comp.r1 >= 2 and comp.r1 + comp.r2 == 8, (comp.r1, comp.r2)
