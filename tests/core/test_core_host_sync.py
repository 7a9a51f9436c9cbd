"""No host synchronisation on the training hot path.

A GPU stalls whenever Python reads a tensor's value: Tensor.item, float/int/bool(tensor), .tolist(),
.cpu() or .to('cpu'). On this CPU machine those calls are free, so the test counts them instead: every
call made from a prac_dist frame during a steady-state training step (forward, backward, optimizer step
with the PRAC schedule hooked), including a step that refreshes every basis, must be zero.
"""

import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from prac_dist import PRACConfig, apply_prac, hook_optimizer, prac_stats

PKG = str(Path(__file__).resolve().parents[2] / "prac_dist")
READS = ("item", "tolist", "cpu", "__float__", "__int__", "__bool__", "__index__")


@contextmanager
def count_host_reads():
    """Counter of (method, prac_dist file:line) for each value read made directly from prac_dist code."""
    calls = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in READS + ("to",)}

    def wrap(name, fn):
        def reader(self, *args, **kwargs):
            frame = sys._getframe(1)
            if frame.f_code.co_filename.startswith(PKG):
                is_read = name != "to" or _to_cpu(self, args, kwargs)
                if is_read:
                    calls[(name, f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}")] += 1
            return fn(self, *args, **kwargs)
        return reader

    for name, fn in originals.items():
        setattr(torch.Tensor, name, wrap(name, fn))
    try:
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def _to_cpu(t, args, kwargs):
    # A .to(...) is a device-to-host copy only from another device: on this CPU machine it cannot be told
    # from a no-op, so .to is counted where a GPU runs the test, .cpu() everywhere.
    dev = kwargs.get("device", args[0] if args and isinstance(args[0], (str, torch.device)) else None)
    return dev is not None and torch.device(dev).type == "cpu" and t.device.type != "cpu"


def _trainer(model):
    """One AdamW training step on a fixed batch, with the PRAC schedule hooked to the optimizer."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    hook_optimizer(opt, model)
    ids = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(0))

    def train_step():
        opt.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()

    return train_step


@pytest.mark.parametrize("cfg", [
    PRACConfig(principal_update_interval=3, random_update_interval=3),
    PRACConfig.lean(principal_update_interval=3, random_update_interval=3),
    PRACConfig.paper(principal_update_interval=3, random_update_interval=3, nonlinear_principal_update_interval=3),
    # The installed fused head in each mode (at this shape 'auto' = the defaults picks 'recompute').
    PRACConfig(principal_update_interval=3, random_update_interval=3, fused_loss="store"),
], ids=["defaults", "lean", "paper", "fused_store"])
def test_training_step_reads_nothing_back(cfg, make_llama):
    model = apply_prac(make_llama(), cfg)
    assert model._prac_state.fused_loss  # the step runs through the installed fused head
    train_step = _trainer(model)
    train_step()  # warm-up: the first refresh builds every basis
    with count_host_reads() as calls:
        for _ in range(3):  # steps 2, 3 (the schedule refreshes Q1 and Q2 here) and 4
            train_step()
    assert model._prac_state.step == 4
    assert not calls, f"host reads from prac_dist code in a training step: {dict(calls)}"


def test_counter_sees_a_read(make_llama):
    # The check has power: prac_stats reads the device statistics back, and that is counted.
    model = apply_prac(make_llama(), PRACConfig(fused_loss=False))
    ids = torch.randint(0, 128, (2, 32))
    model(input_ids=ids, labels=ids).loss.backward()
    with count_host_reads() as calls:
        assert prac_stats(model)
    assert sum(calls.values()) > 0


def test_drift_schedule_reads_one_value_per_step(make_llama):
    """principal_schedule='drift' decides on the host whether to re-solve: one .tolist() per optimizer step,
    whatever the number of bases, and nothing else."""
    model = apply_prac(make_llama(), PRACConfig.paper(principal_schedule="drift"))
    train_step = _trainer(model)
    train_step()
    with count_host_reads() as calls:
        for _ in range(3):
            train_step()
    assert sum(model._prac_state.compressors[k].schedule == "drift" for k in model._prac_state.compressors) > 1
    assert [name for name, _ in calls] == ["tolist"] and sum(calls.values()) == 3, dict(calls)
