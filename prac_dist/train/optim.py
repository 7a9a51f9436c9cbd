"""The optimizer and LR schedule every prac-train engine shares, so runs compare step for step.

AdamW with decoupled weight decay on matrices only, linear warmup then cosine decay to
min_lr_ratio * lr. The local and FSDP2 backends build exactly these; DeepSpeed builds them
too unless its JSON has an "optimizer" section.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

from prac_dist.train.config import OptimConfig

__all__ = ["OptimizerSpec", "build_adamw", "warmup_cosine"]


@dataclass(frozen=True)
class OptimizerSpec:
    """What the loop wants from the optimizer (each backend builds it its own way): the `optim:` section's
    fields plus the loop's step count and accumulation. prac-train builds it with `from_config`."""

    lr: float
    weight_decay: float
    betas: Tuple[float, float]
    eps: float
    grad_clip: float
    warmup_steps: int
    max_steps: int
    min_lr_ratio: float
    grad_accum: int

    @classmethod
    def from_config(cls, optim: OptimConfig, max_steps: int, grad_accum: int) -> "OptimizerSpec":
        return cls(**dataclasses.asdict(optim), max_steps=max_steps, grad_accum=grad_accum)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier at optimizer step `step` (0-based): linear warmup, then cosine down to min_ratio."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_adamw(model: nn.Module, opt: OptimizerSpec, fused: Optional[bool] = None) -> torch.optim.AdamW:
    """Weight decay on matrices only: norms, biases and 1-D parameters are not decayed (as GaLore/ReLoRA)."""
    decay, no_decay = [], []
    seen = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:  # tied embeddings appear once
            continue
        seen.add(id(p))
        # A ZeRO-3 partitioned parameter's data is empty; its real shape is ds_shape.
        (decay if len(getattr(p, "ds_shape", p.shape)) >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": opt.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, fused=fused)
