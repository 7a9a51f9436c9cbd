"""Step time of the baseline and of PRAC, measured the same way: alternating optimizer steps in one process.

`--compare` trains the baseline, then PRAC. A machine whose load changes between the two runs (another job,
a thermal limit) moves their totals apart by more than PRAC's cost, in either direction. Here both models
are set up side by side and take turns, A B B A, on one fixed micro-batch, so a change in load hits both
alike; the report quotes the median of each and its spread, and calls the difference noise when the spread
is larger.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List

import torch

from prac_dist.train.config import TrainConfig

__all__ = ["alternating_step_times", "step_time_summary"]

_WARMUP = 1  # rounds not timed: the first step allocates the optimizer state and solves the bases
_MAX_ROUNDS = 20


def alternating_step_times(cfg: TrainConfig, make_backend: Callable) -> Dict[str, List[float]]:
    """Seconds per optimizer step, {'baseline': [...], 'prac': [...]}, one entry per timed round."""
    from prac_dist.train.models import build_model
    from prac_dist.train.optim import OptimizerSpec

    t = cfg.train
    rounds = min(_MAX_ROUNDS, t.max_steps)
    spec = OptimizerSpec.from_config(cfg.optim, t.max_steps, t.grad_accum)  # as train() builds it
    backends = {}
    for label, prac in (("baseline", None), ("prac", cfg.prac)):
        backend = make_backend()
        model = build_model(cfg.model, cfg.data.seq_len, t.seed, materialize=not backend.materializes_model)
        backend.setup(model, prac, spec)
        backends[label] = backend
    vocab = backends["baseline"].model.get_output_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(t.seed)
    batch = torch.randint(0, vocab, (t.micro_batch_size, cfg.data.seq_len), generator=gen)
    times: Dict[str, List[float]] = {label: [] for label in backends}
    try:
        for r in range(_WARMUP + rounds):
            order = list(backends) if r % 2 == 0 else list(reversed(backends))  # A B, then B A
            for label in order:
                dt = _timed_step(backends[label], batch, t.grad_accum)
                if r >= _WARMUP:
                    times[label].append(dt)
    finally:
        for backend in backends.values():
            backend.close()
    return times


def _timed_step(backend, batch: torch.Tensor, grad_accum: int) -> float:
    batch = batch.to(backend.device)
    cuda = backend.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(backend.device)
    t0 = time.perf_counter()
    for _ in range(grad_accum):
        with backend.forward_context():
            loss = backend.model(input_ids=batch, labels=batch).loss
        backend.backward(loss)
    backend.step()
    if cuda:
        torch.cuda.synchronize(backend.device)
    return time.perf_counter() - t0


def step_time_summary(times: Dict[str, List[float]]) -> Dict[str, object]:
    """Median and interquartile range per run, PRAC's relative cost, and whether the spread hides it."""
    out: Dict[str, object] = {"rounds": len(times["baseline"])}
    for label, ts in times.items():
        q1, med, q3 = _quartiles(ts)
        out[label] = {"median_s": med, "q1_s": q1, "q3_s": q3}
    b, p = out["baseline"], out["prac"]
    diff = p["median_s"] - b["median_s"]
    spread = max(b["q3_s"] - b["q1_s"], p["q3_s"] - p["q1_s"])
    out["prac_cost"] = diff / b["median_s"]
    out["noisy"] = spread > abs(diff)
    return out


def _quartiles(values: List[float]):
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3
