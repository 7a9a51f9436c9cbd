"""PRAC where users already train: the Hugging Face Trainer (and TRL's trainers), Accelerate, torchtitan.

    from prac_dist.integrations import PRACTrainerCallback       # transformers.Trainer, trl.SFTTrainer
    from prac_dist.integrations import prepare_accelerate          # accelerate.Accelerator
    from prac_dist.integrations import PRACConverter, attach_prac  # torchtitan model converter

PEFT needs nothing here: apply_prac accepts a PeftModel, before or after get_peft_model.
This folder sits above the engines (it reads the DeepSpeed "prac" section and writes
the per-rank state files of prac_dist.deepspeed); nothing below imports it.
"""

from __future__ import annotations

__all__ = ["PRACTrainerCallback", "patch_model_for_trainer", "prepare_accelerate", "deepspeed_section",
           "PRACConverter", "attach_prac"]


def __getattr__(name: str):
    # transformers / accelerate / torchtitan are heavy to import; load only the integration asked for.
    if name in ("PRACTrainerCallback", "patch_model_for_trainer"):
        from prac_dist.integrations import trainer

        return getattr(trainer, name)
    if name in ("prepare_accelerate", "deepspeed_section"):
        from prac_dist.integrations import accelerate

        return getattr(accelerate, name)
    if name in ("PRACConverter", "attach_prac"):
        from prac_dist.integrations import torchtitan

        return getattr(torchtitan, name)
    raise AttributeError(f"module 'prac_dist.integrations' has no attribute {name!r}")
