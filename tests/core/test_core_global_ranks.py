"""adaptive_rank='global': r1 + r2 moves between the linear layers' bases, the total (bytes) stays.

Exact checks: the allocation is the brute-force optimum on small curves, the total is preserved,
the stored bytes equal the fixed ratios', and a checkpoint restores the moved budgets.
"""

import itertools

import pytest
import torch

from prac_dist import PRACConfig, apply_prac, load_prac_state_dict, prac_state_dict, step
from prac_dist.core.subspace import allocate_budgets, variance_curve
from prac_dist.memory import measure_saved_bytes


def test_variance_curve_is_the_min_over_splits():
    lam = torch.tensor([9.0, 4.0, 2.0, 1.0, 0.5, 0.25])
    values, best = variance_curve(lam, 6)
    tail = lambda r: float(lam[r:].sum()) / float(lam.sum())  # noqa: E731
    assert values[0] == float("inf")
    for R in range(1, 7):
        bounds = [(6 - R) / (R - r) * tail(r) for r in range(R)]
        assert values[R].item() == pytest.approx(min(bounds), rel=1e-12)
        assert bounds[int(best[R])] == pytest.approx(min(bounds), rel=1e-12)
    assert values[6] == 0.0  # everything stored: exact


def test_allocation_is_the_brute_force_optimum():
    # A steep spectrum (little to gain from more coordinates) and two flat ones (much to gain).
    curves = {"steep": variance_curve(torch.tensor([100.0, 1, 0.1, 0.01, 0.001, 0.0001]), 6)[0],
              "flat": variance_curve(torch.ones(5), 5)[0],
              "mid": variance_curve(torch.tensor([4.0, 3, 2, 1, 1, 1, 1]), 7)[0]}
    for total in (3, 6, 9, 12, 18):
        got = allocate_budgets(curves, total)
        assert sum(got.values()) <= total and all(1 <= got[k] <= len(v) - 1 for k, v in curves.items())
        best = min((sum(float(curves[k][r]) for k, r in zip(curves, rs)), rs)
                   for rs in itertools.product(*(range(1, len(v)) for v in curves.values())) if sum(rs) <= total)
        assert sum(float(curves[k][got[k]]) for k in curves) == pytest.approx(best[0], rel=1e-9, abs=1e-12), (total, got)
    with pytest.raises(ValueError, match="3 bases need at least one coordinate each, the total budget is 2"):
        allocate_budgets(curves, 2)


def _run(model, x, steps):
    for _ in range(steps):
        model(input_ids=x, labels=x).loss.backward()
        step(model)


def test_global_moves_budgets_keeps_total_and_bytes(make_llama):
    x = torch.randint(0, 128, (4, 64), generator=torch.Generator().manual_seed(0))
    fixed = apply_prac(make_llama(ffn=176), PRACConfig(compress_nonlinear=False, fused_loss=False,
                                                           linear_storage="project"))
    moved = apply_prac(make_llama(ffn=176), PRACConfig(compress_nonlinear=False, fused_loss=False,
                                                       linear_storage="project", adaptive_rank="global"))
    _run(fixed, x, 2)
    _run(moved, x, 2)  # step 1 measures the spectra and reallocates, step 2 refreshes the moved bases
    before = {k: c.budget for k, c in fixed._prac_state.compressors.items()}
    after = {k: c.budget for k, c in moved._prac_state.compressors.items()}
    assert sum(after.values()) == sum(before.values()) and after != before
    for c in moved._prac_state.compressors.values():
        assert c.r1 + c.r2 == c.budget and c.r2 >= 1 and c.q1.shape[1] + c.q2.shape[1] == c.budget
        assert not c.principal_due and c.curve is None
    # Same coordinates stored per token in total: the same bytes saved for backward (the saved float32 basis
    # is the compressor's resident tensor, which the accounting skips like a parameter).
    run = lambda m: lambda: m(input_ids=x, labels=x).loss  # noqa: E731
    assert measure_saved_bytes(run(moved), moved).total_bytes == measure_saved_bytes(run(fixed), fixed).total_bytes


def test_global_budgets_survive_a_checkpoint(make_llama):
    x = torch.randint(0, 128, (4, 64), generator=torch.Generator().manual_seed(0))
    cfg = PRACConfig(compress_nonlinear=False, fused_loss=False, adaptive_rank="global", linear_storage="project")
    model = apply_prac(make_llama(ffn=176), cfg)
    _run(model, x, 2)
    sd = prac_state_dict(model)
    fresh = apply_prac(make_llama(ffn=176), cfg)
    load_prac_state_dict(fresh, sd)
    assert ({k: (c.r1, c.r2, c.budget) for k, c in fresh._prac_state.compressors.items()}
            == {k: (c.r1, c.r2, c.budget) for k, c in model._prac_state.compressors.items()})
    name = next(iter(sd["compressors"]))
    sd["compressors"][name]["budget"] += 1
    sd["compressors"][name]["r2"] += 1
    with pytest.raises(ValueError, match="the linear bases' r1 \\+ r2 add up to"):
        load_prac_state_dict(apply_prac(make_llama(ffn=176), cfg), sd)
