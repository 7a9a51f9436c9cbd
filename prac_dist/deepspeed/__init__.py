"""PRAC under DeepSpeed: switched on by a top-level "prac" section of the DeepSpeed JSON.

    import prac_dist.deepspeed
    engine, optimizer, _, scheduler = prac_dist.deepspeed.initialize(model=model, config="ds.json")

Hugging Face Trainer and Accelerate: prac_dist.integrations (PRACTrainerCallback, prepare_accelerate).
prac-train: `prac-train --deepspeed configs/ds/zero2.json` (prac_dist.train.backends.deepspeed,
which wraps this package; nothing here imports prac_dist.train).

`deepspeed` itself is imported only when an engine is built, so reading and
validating a config works without it.
"""

from __future__ import annotations

from prac_dist.deepspeed.config import OffloadConfig, PRACSection
from prac_dist.deepspeed.engine import initialize, prepare_model, wire_engine
from prac_dist.deepspeed.offload import CompressedActivationOffload

__all__ = [
    "initialize",
    "PRACSection",
    "OffloadConfig",
    "CompressedActivationOffload",
    "prepare_model",
    "wire_engine",
]
