"""PRAC under DeepSpeed: switched on by a top-level "prac" section of the DeepSpeed JSON.

    import prac_dist.deepspeed
    engine, optimizer, _, scheduler = prac_dist.deepspeed.initialize(model=model, config="ds.json")

Hugging Face Trainer: `Trainer(..., args=TrainingArguments(deepspeed="ds.json"),
callbacks=[prac_dist.deepspeed.PRACTrainerCallback()])`.
prac-train: `prac-train --deepspeed configs/ds/zero2.json` (DeepSpeedBackend).

`deepspeed` itself is imported only when an engine is built, so reading and
validating a config works without it.
"""

from __future__ import annotations

from prac_dist.deepspeed.checkpoint import load_prac_state, save_prac_state
from prac_dist.deepspeed.config import OffloadConfig, PRACSection, load_ds_config, parse_prac_section
from prac_dist.deepspeed.engine import initialize, prepare_model, wire_engine
from prac_dist.deepspeed.offload import CompressedActivationOffload

__all__ = [
    "initialize",
    "parse_prac_section",
    "load_ds_config",
    "PRACSection",
    "OffloadConfig",
    "CompressedActivationOffload",
    "prepare_model",
    "wire_engine",
    "save_prac_state",
    "load_prac_state",
    "PRACTrainerCallback",
    "patch_model_for_trainer",
]


def __getattr__(name: str):
    # transformers is heavy to import; only the Trainer path needs it.
    if name in ("PRACTrainerCallback", "patch_model_for_trainer"):
        from prac_dist.deepspeed import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'prac_dist.deepspeed' has no attribute {name!r}")
