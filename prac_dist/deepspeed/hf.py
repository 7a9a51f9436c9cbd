"""The Hugging Face Trainer path: one callback reads the "prac" section of `TrainingArguments(deepspeed=...)`.

    trainer = Trainer(model=model, args=TrainingArguments(..., deepspeed="ds.json"),
                      callbacks=[PRACTrainerCallback()], ...)

The Trainer builds its DeepSpeed engine inside `train()` (through Accelerate), so
`prac_dist.deepspeed.initialize` never runs there. The callback does the same three
things at the Trainer's seams:
- `on_init_end` (end of `Trainer.__init__`, before any engine exists): validate the
  section and `apply_prac` to the model -- so ZeRO-3 hooks see the PRAC modules;
- `on_step_end` (once per optimizer step, after the accumulation window): advance the schedule;
- `on_save` / `on_train_begin` on resume: per-rank PRAC state inside `checkpoint-<step>/`.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

from transformers import TrainerCallback

from prac_dist.deepspeed.checkpoint import load_prac_state, save_prac_state
from prac_dist.deepspeed.config import parse_prac_section
from prac_dist.deepspeed.engine import prepare_model

__all__ = ["PRACTrainerCallback", "patch_model_for_trainer"]

logger = logging.getLogger(__name__)


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
    """PRAC for `transformers.Trainer` with DeepSpeed; see the module docstring.

    ds_config: the DeepSpeed config to read the "prac" section from; default `args.deepspeed`.
    resume_from_checkpoint: where to load PRAC state from on resume; default
        `<output_dir>/checkpoint-<global_step>`, the folder Trainer resumes from.
    """

    def __init__(self, ds_config: Any = None, resume_from_checkpoint: Optional[str] = None):
        self.ds_config = ds_config
        self.resume_from_checkpoint = resume_from_checkpoint
        self._active = False

    def on_init_end(self, args, state, control, model=None, **kwargs):
        from prac_dist import is_prac_model

        config = self.ds_config if self.ds_config is not None else args.deepspeed
        if config is None:
            raise ValueError("PRACTrainerCallback: no DeepSpeed config; pass TrainingArguments(deepspeed=...) "
                             "or PRACTrainerCallback(ds_config=...)")
        section = parse_prac_section(config)
        if is_prac_model(model):
            self._active = True  # patched by the user (patch_model_for_trainer / apply_prac)
        elif section is not None and section.enabled:
            prepare_model(model, section)
            self._active = True
        if self._active:
            logger.info("PRAC active under the Trainer (%s)", "DeepSpeed 'prac' section" if section else "apply_prac")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self._active or state.global_step == 0:
            return
        directory = self.resume_from_checkpoint or os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        load_prac_state(model, directory)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self._active:
            from prac_dist import step as prac_step

            prac_step(model)

    def on_save(self, args, state, control, model=None, **kwargs):
        if self._active:
            save_prac_state(model, os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))
