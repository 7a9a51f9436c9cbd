"""The seam between the training loop and the engine that runs it.

`prac-train` has one loop (prac_dist.train.loop); the engine underneath is a
TrainBackend: a single process (backends.local), DeepSpeed (backends.deepspeed)
or FSDP2 (backends.fsdp). The adapters live here, beside the trainer they serve:
prac_dist.deepspeed and prac_dist.fsdp hold the engine integrations and never
import prac_dist.train (tests/test_layering.py checks it). Each adapter module is
imported only when its engine is selected.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ContextManager, Dict, Optional

import torch
from torch import nn

from prac_dist.train.optim import OptimizerSpec

__all__ = ["TrainBackend"]


class TrainBackend(abc.ABC):
    """One engine: owns distributed setup, the wrapped model, optimizer, LR schedule and PRAC schedule.

    Call order used by the loop:
        backend = SomeBackend(...); backend.setup(model, prac_config_or_None, opt_spec)
        for each optimizer step:
            for each micro-batch:
                with backend.forward_context():
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
    # True: setup() takes a preset model whose parameters are still on the meta device, shards it
    # and materialises each rank's shard (prac_dist.train.meta_init); the loop then skips the CPU build.
    materializes_model: bool = False
    # True: `device` is known at construction, so the loop may run the unpatched model there before
    # setup() (its saved-bytes reference for the PRAC saving); engines that pick the device in setup() cannot.
    runs_before_setup: bool = False

    @abc.abstractmethod
    def setup(self, model: nn.Module, prac_config: Optional[Any], opt: OptimizerSpec) -> None:
        """Apply PRAC (when prac_config is not None), wrap/shard the model, build optimizer + schedule."""

    @abc.abstractmethod
    def forward_context(self) -> ContextManager:
        """Entered around every forward of the loop (training, evaluation, memory measurement)."""

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
