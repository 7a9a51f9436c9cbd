"""Storage policy: what apply_prac chooses per linear is what core/cost.py says; the cost formulas are
what FlopCounterMode counts; int8 storage is unbiased; paper() is the projected method everywhere."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from prac_dist import PRACConfig, apply_prac
from prac_dist.core.cost import linear_storage_mode, projection_extra_flops
from prac_dist.core.linear import prac_linear
from prac_dist.core.storage import pack_int8, unpack
from prac_dist.core.subspace import Compressor
from prac_dist.ops.gelu_linear import gelu_linear, quantize_through_gelu
from prac_dist.patching.modules import PRACLinear


def _linear_compressors(model):
    """{group name: (compressor, n, total output width m)} from the swapped linear modules."""
    out = {}
    for module in model.modules():
        if isinstance(module, PRACLinear):
            c = module.prac_compressor
            n, m = out.get(c.name, (c, module.in_features, 0))[1:]
            out[c.name] = (c, n, m + module.out_features)
    return out


def test_auto_choice_per_layer_is_cost_models(make_llama):
    model = apply_prac(make_llama(hidden=64, ffn=160), PRACConfig(fused_loss=False))
    groups = _linear_compressors(model)
    assert groups
    for name, (comp, n, m) in groups.items():
        assert comp.storage == linear_storage_mode("auto", n, m, comp.r1 + comp.r2), name
    # What the rule gives on a LLaMA layer (r = 0.6 n): q/k/v (m = 3n) and gate/up (m = 2 ffn) project,
    # down_proj (n = ffn > m) stores its input in int8.
    kinds = {name.rsplit(".", 1)[-1]: comp.storage for name, (comp, _, _) in groups.items()}
    assert kinds == {"q_proj+k_proj+v_proj": "project", "gate_proj+up_proj": "project", "down_proj": "int8"}
    assert PRACConfig.paper().linear_storage == "project"
    forced = apply_prac(make_llama(hidden=64, ffn=160), PRACConfig(fused_loss=False, linear_storage="int8"))
    assert {c.storage for c, _, _ in _linear_compressors(forced).values()} == {"int8"}


@pytest.mark.parametrize("n, m", [(64, 192), (160, 64)])
def test_projection_flop_formula_matches_flop_counter(n, m):
    """FlopCounterMode's count of a projected linear (forward + backward) minus the exact one's."""
    N, r1, r2 = 96, int(0.3 * n), int(0.3 * n)
    x = torch.randn(N, n)
    w = torch.nn.Parameter(torch.randn(m, n))

    def count(fn):
        with FlopCounterMode(display=False) as fc:
            fn().sum().backward()
        return fc.get_total_flops()

    comp = Compressor("g", n, r1, r2, seed=0, per_rank_random=False, storage_bits=16, kernel="torch")
    comp.refresh(x)  # the refresh (Gram, eigh) happens outside the counted step, as in a steady-state step
    xg = x.clone().requires_grad_()  # dX is computed in both, as in a network
    projected = count(lambda: prac_linear(xg, w, None, comp))
    exact = count(lambda: torch.nn.functional.linear(xg, w))
    assert projected - exact == projection_extra_flops(N, n, m, r1 + r2)


def test_int8_storage_is_unbiased():
    """E[dequant(pack_int8(x))] = x. K = 4000 roundings of the same rows: each entry's rounding error is
    within one step s (row max / 127) with variance <= s²/4, so the mean has std <= s / (2 sqrt K); the
    tolerance is 6 such std per entry (P(any of 512 entries beyond) < 1e-6). Round-to-nearest, which is
    biased, misses the same tolerance (the test has power)."""
    K = 4000
    torch.manual_seed(0)
    x = torch.randn(4, 128)
    s = x.abs().amax(1, keepdim=True) / 127
    total = torch.zeros_like(x, dtype=torch.float64)
    comp = Compressor("q", 128, 0, 0, seed=0, per_rank_random=False, kernel="torch", storage="int8")
    for _ in range(K):
        total += comp.decompress(comp.compress(x), torch.float32).double()
    tol = 6 * s.double() / (2 * math.sqrt(K))
    assert bool(((total / K - x.double()).abs() <= tol).all())
    nearest = unpack(pack_int8(x), torch.float32)  # one draw: codes are floor or ceil of x / s
    assert bool(((nearest - x).abs() <= s * (1 + 1e-6)).all())
    assert float((torch.round(x / s) * s - x).abs().max()) > float(tol.max())


def test_int8_linear_weight_gradient_is_unbiased(make_llama):
    """down_proj under 'auto' stores its input in int8: the mean dW over K steps equals the exact dW.
    Tolerance: 6 empirical standard errors per entry plus float32 rounding (P(false alarm) < 1e-5)."""
    K = 64
    ref = make_llama(hidden=64, ffn=160)
    ids = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(1))
    ref(input_ids=ids, labels=ids).loss.backward()
    name = "model.layers.1.mlp.down_proj.weight"
    exact = dict(ref.named_parameters())[name].grad.clone()
    model = apply_prac(copy.deepcopy(ref), PRACConfig(compress_nonlinear=False, fused_loss=False))
    param = dict(model.named_parameters())[name]
    draws = []
    for _ in range(K):
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        draws.append(param.grad.clone())
    g = torch.stack(draws)
    assert float(g.std(0).max()) > 0  # the rounding is random: each draw differs
    gap = (g.mean(0) - exact).abs()
    assert bool((gap <= 6 * g.std(0) / math.sqrt(K) + 1e-5 * exact.abs().max()).all())


def test_paper_preset_projects_everything_with_the_papers_schedule(make_llama):
    """The paper's ranks, bytes, T1 = T2 = 500 and exact solver for the linear bases; its departures are
    schedules (PRACConfig.paper's docstring): the linear Q1 also at steps 1, 2, 4, ..., 256, the norm/SwiGLU
    bases re-solved every step by the randomized solver. Overrides give back the paper's own schedule."""
    cfg = PRACConfig.paper(fused_loss=False)
    assert (cfg.principal_ratio, cfg.random_ratio, cfg.nonlinear_principal_ratio, cfg.nonlinear_random_ratio) == (
        0.3, 0.3, 0.2, 0.2)
    model = apply_prac(make_llama(hidden=64, ffn=160), cfg)
    comps = model._prac_state.compressors
    assert comps and all(c.projects and c.t2 == 500 and c.storage_bits == 16 for c in comps.values())
    schedules = {(c.t1, c.solver, c.schedule) for c in comps.values()}
    assert schedules == {(500, "exact", "early_dense"), (1, "randomized", "interval")}, schedules
    paper_schedule = PRACConfig.paper(principal_schedule="interval", nonlinear_principal_update_interval=500,
                                      nonlinear_principal_solver="exact")
    comps = apply_prac(make_llama(hidden=64, ffn=160), paper_schedule)._prac_state.compressors
    assert {(c.t1, c.solver, c.schedule) for c in comps.values()} == {(500, "exact", "interval")}
    assert PRACConfig.lean().compress_nonlinear is False


def test_paper_preset_weight_gradient_is_the_projected_estimator(make_llama):
    """Under paper(), dW of q_proj is exactly dYᵀ X [Q1 | cQ2] [Q1 | Q2]ᵀ from the compressor's bases."""
    model = apply_prac(make_llama(hidden=64, ffn=160), PRACConfig.paper(fused_loss=False, compress_nonlinear=False))
    q = model.model.layers[0].self_attn.q_proj
    seen = {}
    q.register_forward_hook(lambda m, i, o: seen.__setitem__("x", i[0].detach().reshape(-1, 64)))
    q.register_full_backward_hook(lambda m, gi, go: seen.__setitem__("dy", go[0].detach().reshape(-1, 64)))
    ids = torch.randint(0, 128, (2, 48), generator=torch.Generator().manual_seed(2))
    model(input_ids=ids, labels=ids).loss.backward()
    comp = q.prac_compressor
    expected = seen["dy"].t() @ (seen["x"] @ comp.q_fwd(torch.float32, "cpu")) @ comp.q_back("cpu").t()
    torch.testing.assert_close(q.weight.grad, expected, rtol=1e-4, atol=1e-6)
    exact = seen["dy"].t() @ seen["x"]
    assert float((q.weight.grad - exact).abs().max()) > 1e-3 * float(exact.abs().max())  # really estimated


def test_gelu_int8_storage_is_unbiased_in_gelus_image():
    """The GELU MLP's int8 h serves the down projection's dW through gelu(h~): E[gelu(h~)] = gelu(h).

    Each row holds values in [-3, 3] and one 127, so the step is s = 1 and GELU's curvature over a cell is
    large (plain rounding of h is off by up to 0.08 in expectation here). K = 4000 roundings; an entry's
    gelu(h~) is one of its cell's two ends, so its std is at most half the jump J between them and the mean's
    at most J / (2 sqrt K): the tolerance is 6 of those (P(any of 512 entries beyond) < 1e-6) plus the one
    bias the rounding leaves, in the cell where GELU turns ([-1, 0]: at most gelu(-1) - min gelu = 0.012).
    Plain stochastic rounding of h (pack_int8, unbiased for h itself) misses the same tolerance."""
    K = 4000
    h = torch.linspace(-3, 3, 4 * 128).view(4, 128).clone()
    h[:, 0] = 127.0
    lo = torch.floor(h)
    jump = (F.gelu(lo + 1) - F.gelu(lo)).abs().double()
    tol = 6 * jump / (2 * math.sqrt(K)) + 0.012
    comp = Compressor("g", 128, 0, 0, seed=0, per_rank_random=False, kernel="torch", storage="int8")
    stacked = h.repeat(K, 1)  # K copies of the rows in one call: the noise is keyed per element, independent
    comp.refresh(stacked)  # puts the rounding keys on the device
    ours = F.gelu(comp.decompress(quantize_through_gelu(stacked, "none", comp.next_seed()), torch.float32))
    plain = F.gelu(comp.decompress(comp.compress(stacked), torch.float32))
    ours, plain = (t.double().view(K, *h.shape).sum(0) for t in (ours, plain))
    want = F.gelu(h).double()
    assert bool(((ours / K - want).abs() <= tol).all()), float(((ours / K - want).abs() - tol).max())
    assert bool(((plain / K - want).abs() > tol).any())  # the test has power against rounding h itself


def test_gelu_mlp_down_projection_weight_gradient_is_unbiased():
    """gelu_linear with an int8 compressor: the mean dW over K draws equals the exact dW, dh stays close.
    Tolerance as for the int8 linear: 6 empirical standard errors per entry plus float32 rounding."""
    K = 256
    gen = torch.Generator().manual_seed(4)
    h, dy = torch.randn(96, 48, generator=gen) * 2, torch.randn(96, 16, generator=gen)
    w = torch.nn.Parameter(torch.randn(16, 48, generator=gen) / 7)
    hg = h.clone().requires_grad_()
    torch.autograd.backward(gelu_linear(hg, "none", w, None), dy)
    exact_dw, exact_dh = w.grad.clone(), hg.grad.clone()
    comp = Compressor("g", 48, 0, 0, seed=0, per_rank_random=False, kernel="torch", storage="int8")
    draws, dhs = [], []
    for _ in range(K):
        w.grad, hg.grad = None, None
        torch.autograd.backward(gelu_linear(hg, "none", w, None, comp=comp), dy)
        draws.append(w.grad.clone())
        dhs.append(hg.grad.clone())
    g = torch.stack(draws)
    assert float(g.std(0).max()) > 0  # the rounding is random: each draw differs
    gap = (g.mean(0) - exact_dw).abs()
    assert bool((gap <= 6 * g.std(0) / math.sqrt(K) + 1e-5 * exact_dw.abs().max()).all())
    # dh = dA · gelu'(h~) is not claimed unbiased (a nonlinear function of the stored form), only close:
    # |gelu''| <= 0.8 and |h~ - h| <= s (here 0.05), so each entry is within 0.04 |dA| of exact.
    da = dy @ w.detach()
    assert bool(((torch.stack(dhs) - exact_dh).abs() <= 0.8 * (h.abs().amax(1, keepdim=True) / 127) * da.abs()
                 + 1e-5).all())
