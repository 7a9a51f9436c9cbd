"""The seam between the training loop and the engine that runs it.

`prac-train` has one loop (prac_dist.train.loop); the engine underneath is a
TrainBackend: a single process (prac_dist.train.local), DeepSpeed
(prac_dist.deepspeed.backend) or FSDP2 (prac_dist.fsdp.backend). The loop
never touches the engine directly, so each integration lives in its own folder.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

__all__ = ["TrainBackend", "OptimizerSpec"]


class OptimizerSpec:
    """What the loop wants from the optimizer; each backend builds it its own way."""

    def __init__(self, lr: float, weight_decay: float, betas: tuple, eps: float,
                 grad_clip: float, warmup_steps: int, max_steps: int, min_lr_ratio: float,
                 grad_accum: int):
        self.lr = lr
        self.weight_decay = weight_decay
        self.betas = betas
        self.eps = eps
        self.grad_clip = grad_clip
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        self.min_lr_ratio = min_lr_ratio
        self.grad_accum = grad_accum


class TrainBackend(abc.ABC):
    """One engine: owns distributed setup, the wrapped model, optimizer, LR schedule and PRAC schedule.

    Call order used by the loop:
        backend = SomeBackend(...); backend.setup(model, prac_config_or_None, opt_spec)
        for each optimizer step:
            for each micro-batch:
                loss = backend.model(input_ids=..., labels=...).loss
                backend.backward(loss)               # unscaled loss; the backend divides by grad_accum
            info = backend.step()                    # clip, optimizer step, LR step, prac_dist.step
        backend.save(dir, extra) / extra = backend.load(dir)
    """

    name: str = "base"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    model: nn.Module

    @abc.abstractmethod
    def setup(self, model: nn.Module, prac_config: Optional[Any], opt: OptimizerSpec) -> None:
        """Apply PRAC (when prac_config is not None), wrap/shard the model, build optimizer + schedule."""

    @abc.abstractmethod
    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's (unscaled) loss."""

    @abc.abstractmethod
    def step(self) -> Dict[str, float]:
        """End of an accumulation window: returns {'lr': ..., 'grad_norm': ...}."""

    @abc.abstractmethod
    def save(self, path: Path, extra: Dict[str, Any]) -> None:
        """Write model, optimizer, scheduler and PRAC state (every rank calls this)."""

    @abc.abstractmethod
    def load(self, path: Path) -> Dict[str, Any]:
        """Restore what save wrote; returns `extra`."""

    def barrier(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def all_reduce_mean(self, value: float) -> float:
        """Mean of a scalar over ranks (for logging losses)."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Tear down process groups the backend created."""
