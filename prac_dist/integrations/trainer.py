"""`transformers.Trainer`: one callback applies PRAC, advances its schedule and checkpoints its state.

    trainer = Trainer(model=model, args=args, callbacks=[PRACTrainerCallback(PRACConfig())], ...)
    trainer = Trainer(..., args=TrainingArguments(deepspeed="ds.json"), callbacks=[PRACTrainerCallback()])

What PRAC needs, at the Trainer's seams:
- `on_init_end` (end of `Trainer.__init__`, before the optimizer and any DeepSpeed engine exist):
  `apply_prac` from the PRACConfig, or from the DeepSpeed JSON's "prac" section -- so ZeRO-3
  registers its hooks on the PRAC modules. A model already patched is left as it is.
- `on_step_end` (once per optimizer step, after the whole gradient-accumulation window):
  advance the schedule, unless something else already did (hook_optimizer).
- `on_save`: this rank's PRAC state into `checkpoint-<step>/`; `on_train_begin` of a resumed
  run loads it back, so `trainer.train(resume_from_checkpoint=...)` continues bit for bit.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from transformers import TrainerCallback

from prac_dist.config import PRACConfig
from prac_dist.checkpoint import load_prac_state, save_prac_state
from prac_dist.deepspeed.config import parse_prac_section
from prac_dist.deepspeed.engine import prepare_model
from prac_dist.integrations._apply import apply_once, check_config
from prac_dist.patching import get_prac_state, step

__all__ = ["PRACTrainerCallback", "patch_model_for_trainer"]


def patch_model_for_trainer(model, ds_config: Any):
    """Apply PRAC from `ds_config`'s "prac" section (path, dict or base64); returns the model.

    Only needed to patch before building the Trainer yourself; PRACTrainerCallback does it too
    (and leaves an already patched model alone). The schedule still needs the callback.
    """
    section = parse_prac_section(ds_config)
    if section is None:
        raise ValueError("patch_model_for_trainer: the DeepSpeed config has no 'prac' section")
    prepare_model(model, section)
    return model


class PRACTrainerCallback(TrainerCallback):
    """PRAC for `transformers.Trainer`, with or without DeepSpeed; see the module docstring.

    config: a PRACConfig to apply (without DeepSpeed, or with a DeepSpeed JSON that has no "prac" section).
    ds_config: the DeepSpeed config whose "prac" section to read; default `args.deepspeed`.
    resume_from_checkpoint: where a resumed run's PRAC state is; default the folder the Trainer
        resumes from when it is `args.resume_from_checkpoint` or `<output_dir>/checkpoint-<step>`.
    """

    def __init__(self, config: Optional[PRACConfig] = None, ds_config: Any = None,
                 resume_from_checkpoint: Optional[str] = None):
        check_config(config, "PRACTrainerCallback")
        self.config, self.ds_config = config, ds_config
        self.resume_from_checkpoint = resume_from_checkpoint
        self._active = False
        self._offset = 0  # PRAC steps taken before this train() began, beyond the Trainer's global_step

    def on_init_end(self, args, state, control, model=None, **kwargs):
        source = self.ds_config if self.ds_config is not None else args.deepspeed
        section = parse_prac_section(source) if source is not None else None
        self._active = apply_once(model, self.config, section, "PRACTrainerCallback")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self._active:
            return
        if state.global_step > 0:
            load_prac_state(model, self._resume_dir(args, state))
        self._offset = get_prac_state(model).step - state.global_step

    def _resume_dir(self, args, state) -> str:
        if self.resume_from_checkpoint is not None:
            return self.resume_from_checkpoint
        if isinstance(args.resume_from_checkpoint, str):
            return args.resume_from_checkpoint
        return os.path.join(args.output_dir, f"checkpoint-{state.global_step}")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # Once per optimizer step; a hook_optimizer on the Trainer's optimizer may have advanced it already.
        if self._active and get_prac_state(model).step - self._offset < state.global_step:
            step(model)

    def on_save(self, args, state, control, model=None, **kwargs):
        if self._active:
            save_prac_state(model, os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))
