"""apply_prac warns once when training forwards go on and nobody advances the schedule."""

import warnings

import torch

from prac_dist import PRACConfig, apply_prac, hook_optimizer

CFG = PRACConfig(principal_update_interval=3, random_update_interval=2, nonlinear_principal_update_interval=1)


def forwards(model, n, x):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(n):
            model(input_ids=x, labels=x).loss.backward()
    return [w for w in caught if "step() was never called" in str(w.message)]


def test_warns_once_past_twice_the_longest_interval(make_llama):
    model, x = apply_prac(make_llama(), CFG), torch.randint(0, 128, (2, 8))
    assert forwards(model, 6, x) == []  # 2 x max(3, 2, 1) = 6 forwards are still fine
    caught = forwards(model, 5, x)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "hook_optimizer" in message and "step(model)" in message


def test_no_warning_with_hook_optimizer_or_in_eval(make_llama):
    model, x = apply_prac(make_llama(), CFG), torch.randint(0, 128, (2, 8))
    model.eval()
    assert forwards(model, 8, x) == []  # eval-mode forwards do not count
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    hook_optimizer(optimizer, model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(10):
            model(input_ids=x, labels=x).loss.backward()
            optimizer.step()
    assert not [w for w in caught if "step() was never called" in str(w.message)]
