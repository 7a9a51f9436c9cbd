"""The refreshes production runs: one exact basis and one captured-energy definition, the randomized
solver held to the exact one through the Compressor, and the nonlinear refresh schedules."""

from __future__ import annotations

import typing

import pytest
import torch

from prac_dist import PRACConfig, apply_prac, hook_optimizer, step
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
    assert steps("drift", 50, 201) == [50, 100, 150, 200]  # the trigger's refreshes come from apply.step
    hints = typing.get_type_hints(PRACConfig)
    assert set(SCHEDULES) == set(hints["principal_schedule"].__args__)
    assert set(hints["nonlinear_principal_schedule"].__args__) == set(SCHEDULES) - {"drift"}
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
        for k, c in comps.items():  # by value: Q1 is a view of the held [Q1 | Q2], renewed by a Q2 redraw too
            if c.projects and (seen[k] is None or not torch.equal(c.q1, seen[k])):
                refreshed[k].append(step)
                seen[k] = c.q1.clone()
    return comps, refreshed


@pytest.mark.parametrize("linear_schedule", ["interval", "early_dense"])
def test_paper_refreshes_bases_on_their_schedules(make_llama, linear_schedule):
    """In training, the norm/SwiGLU bases and the linear ones are each recomputed on the forward after
    each step their own schedule names (steps count from the forward that first builds them)."""
    cfg = PRACConfig.paper(principal_update_interval=8, random_update_interval=8, principal_schedule=linear_schedule,
                           nonlinear_principal_update_interval=6, nonlinear_principal_schedule="early_dense")
    comps, refreshed = _train_and_watch(make_llama(), cfg, 20)
    nonlinear = [k for k, c in comps.items() if c.t1 == 6]
    linear = [k for k, c in comps.items() if c.projects and c.t1 == 8]
    assert nonlinear and linear
    for k in nonlinear:  # schedule marks after steps 1, 2, 4, 6, 12, 18 -> new Q1 at the next forward
        assert refreshed[k] == [1, 2, 3, 5, 7, 13, 19], k
    for k in linear:  # early_dense: marks after 1, 2, 4, 8, 16
        assert refreshed[k] == ([1, 9, 17] if linear_schedule == "interval" else [1, 2, 3, 5, 9, 17]), k


def _spiked(n: int, r: int, first: bool, seed: int) -> torch.Tensor:
    """256 rows whose energy lies (100:1) in the first r (first=True) or the last r coordinates."""
    scale = torch.full((n,), 0.1)
    scale[slice(0, r) if first else slice(n - r, n)] = 10.0
    return torch.randn(256, n, generator=torch.Generator().manual_seed(seed)) * scale


def test_drift_trigger_compares_the_captured_share():
    """schedule='drift': the share ‖XQ1‖²/‖X‖² of the last compressed batch against the last refresh's."""
    comp = Compressor("c", 16, 4, 4, seed=0, per_rank_random=False, t1=1000, schedule="drift", drift=0.9)
    x = _spiked(16, 4, True, 0)
    assert comp.drifted() is None  # nothing to compare yet
    comp.refresh(x)
    comp.compress(x)
    assert abs(float(comp.batch_energy) - float(comp.energy)) < 1e-4 and not bool(comp.drifted())
    comp.compress(_spiked(16, 4, True, 1))  # another batch of the same subspace: no trigger
    assert not bool(comp.drifted())
    comp.compress(_spiked(16, 4, False, 2))  # the energy moved out of Q1
    assert float(comp.batch_energy) < 0.01 and bool(comp.drifted())
    comp.mark(1)
    assert not comp.principal_due  # the interval alone is not due; patching.apply.step reads the trigger
    assert Compressor("c", 16, 4, 4, seed=0, per_rank_random=False).drifted() is None  # other schedules: never


def test_step_refreshes_exactly_the_drifted_bases(make_llama):
    cfg = PRACConfig.paper(principal_schedule="drift", fused_loss=False)
    model = apply_prac(make_llama(), cfg)
    comps = model._prac_state.compressors
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    linear = [k for k, c in comps.items() if c.schedule == "drift"]
    assert linear and all(comps[k].batch_energy is not None for k in linear)
    low = linear[0]
    comps[low].batch_energy = comps[low].energy * 0.5
    for k in linear[1:]:
        comps[k].batch_energy = comps[k].energy.clone()
    step(model)
    assert [k for k in linear if comps[k].principal_due] == [low]
    model(input_ids=ids, labels=ids)
    assert not comps[low].principal_due and comps[low].batch_energy is not None
