"""The refreshes production runs: one exact basis and one captured-energy definition, the randomized
solver held to the exact one through the Compressor, and the nonlinear refresh schedules."""

from __future__ import annotations

import typing

import pytest
import torch

from prac_dist import PRACConfig, apply_prac, hook_optimizer
from prac_dist.core.subspace import SCHEDULES, Compressor
from prac_dist.kernels import captured_energy, principal_basis


@pytest.fixture(scope="module")
def activations():
    from benchmarks._real_activations import trained_llama_activations

    # 64 wide, ffn 172, 10 AdamW steps on WikiText-2: a decaying spectrum, unlike Gaussian test data.
    return trained_llama_activations(hidden=64, ffn=172, layers=2, steps=10, seq=64, batch=4, n_tokens=2048)


def _refreshed(x: torch.Tensor, solver: str, r1: int, q_prev=None) -> Compressor:
    comp = Compressor("c", x.shape[1], r1, r1, seed=0, per_rank_random=False, solver=solver, t1=1, t2=1)
    if q_prev is not None:
        comp.q1 = q_prev
    comp.refresh(x)
    return comp


@pytest.mark.parametrize("name", ["attn_in", "mlp_in", "down_proj_in"])
def test_energy_of_exact_basis_is_the_captured_energy(activations, name):
    # The exact refresh reads the share off the spectrum; captured_energy computes ‖XQ‖²/‖X‖²: one quantity.
    x = activations[name]
    r = int(0.2 * x.shape[1])
    q, energy = principal_basis(x, r)
    torch.testing.assert_close(energy, captured_energy(x, q), rtol=1e-5, atol=0)
    comp = _refreshed(x, "exact", r)
    torch.testing.assert_close(comp.q1, q, rtol=0, atol=0)  # the Compressor runs exactly this function
    torch.testing.assert_close(comp.energy, energy, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["attn_in", "mlp_in", "down_proj_in"])
def test_randomized_compressor_captures_99_percent_of_exact(activations, name):
    x = activations[name]
    n = x.shape[1]
    r = int(0.2 * n)
    half = x.shape[0] // 2
    exact = _refreshed(x[half:], "exact", r)
    # Warm start from another batch's basis: what a scheduled refresh sees.
    warm = _refreshed(x[half:], "randomized", r, q_prev=_refreshed(x[:half], "exact", r).q1)
    cold = _refreshed(x[half:], "randomized", r)
    for comp in (warm, cold):
        torch.testing.assert_close(comp.q1.t() @ comp.q1, torch.eye(r), rtol=0, atol=1e-5)
        # Its reported energy is the captured energy of the basis it installed.
        torch.testing.assert_close(comp.energy, captured_energy(x[half:], comp.q1), rtol=1e-5, atol=0)
        assert float(comp.energy) >= 0.99 * float(exact.energy)
    # Power: a random basis of the same size is far below the bar.
    q_rand = torch.linalg.qr(torch.randn(n, r, generator=torch.Generator().manual_seed(0))).Q
    assert float(captured_energy(x[half:], q_rand)) < 0.99 * float(exact.energy)


def test_schedules_name_the_refresh_steps():
    def steps(schedule, t1, upto):
        comp = Compressor("c", 8, 1, 1, seed=0, per_rank_random=False, t1=t1, schedule=schedule)
        return [s for s in range(1, upto) if comp.principal_scheduled(s)]

    assert steps("interval", 1, 6) == [1, 2, 3, 4, 5]
    assert steps("interval", 50, 201) == [50, 100, 150, 200]
    assert steps("early_dense", 50, 201) == [1, 2, 4, 8, 16, 32, 50, 100, 150, 200]
    assert steps("early_dense", 1, 6) == [1, 2, 3, 4, 5]
    assert steps("early_dense", 16, 40) == [1, 2, 4, 8, 16, 32]  # 16 is due once, not twice
    assert set(SCHEDULES) == set(typing.get_type_hints(PRACConfig)["nonlinear_principal_schedule"].__args__)
    with pytest.raises(ValueError, match="schedule='often'.*accepted"):
        Compressor("c", 8, 1, 1, seed=0, per_rank_random=False, schedule="often")


def test_config_rejects_unknown_schedule():
    from prac_dist.validate import ConfigError

    with pytest.raises(ConfigError, match="nonlinear_principal_schedule"):
        PRACConfig(nonlinear_principal_schedule="sometimes")


def _train_and_watch(model, cfg, steps):
    """Steps at whose forward each compressor installed a new Q1 (1 = the first forward)."""
    apply_prac(model, cfg)
    comps = model._prac_state.compressors
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    hook_optimizer(opt, model)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    seen = {k: None for k in comps}
    refreshed = {k: [] for k in comps}
    for step in range(1, steps + 1):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        for k, c in comps.items():
            if c.projects and c.q1 is not seen[k]:
                refreshed[k].append(step)
                seen[k] = c.q1
    return comps, refreshed


def test_paper_refreshes_nonlinear_bases_on_its_schedule(make_llama):
    """In training, paper()'s norm/SwiGLU bases are recomputed on the forward after each scheduled step
    (steps count from the forward that first builds them), the linear ones every T1."""
    cfg = PRACConfig.paper(principal_update_interval=8, random_update_interval=8,
                           nonlinear_principal_update_interval=8, nonlinear_principal_schedule="early_dense")
    comps, refreshed = _train_and_watch(make_llama(), cfg, 20)
    nonlinear = [k for k, c in comps.items() if c.schedule == "early_dense"]
    linear = [k for k, c in comps.items() if c.projects and c.schedule == "interval"]
    assert nonlinear and linear
    for k in nonlinear:  # schedule marks after steps 1, 2, 4, 8, 16 -> new Q1 at the next forward
        assert refreshed[k] == [1, 2, 3, 5, 9, 17], k
    for k in linear:
        assert refreshed[k] == [1, 9, 17], k
