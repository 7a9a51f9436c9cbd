"""What apply_prac checks at every training forward (a Python counter and a few attribute reads: no host sync).

- LoRA layers PEFT wrapped around PRAC modules after apply_prac get their A input compressed
  (prac_dist.patching.lora);
- a schedule nobody advances: with the Trainer's or Accelerate's own optimizer and no
  hook_optimizer / step, the bases are drawn at the first forward and never refreshed. After
  twice the longest refresh interval of training forwards with step() never called, warn once.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn

from prac_dist.config import PRACConfig
from prac_dist.patching.lora import compress_lora_inputs

__all__ = ["watch_forwards", "longest_interval"]


def longest_interval(cfg: PRACConfig) -> int:
    return max(cfg.principal_update_interval, cfg.random_update_interval, cfg.nonlinear_principal_update_interval)


def watch_forwards(state, model: nn.Module) -> None:
    """Register the forward pre-hook on `model` (the module apply_prac patched); its handle goes to state.handles."""
    state.handles.append(model.register_forward_pre_hook(functools.partial(_before_forward, state)))
    compress_lora_inputs(state.swaps, state.handles, state.reported)


def _before_forward(state, module: nn.Module, _args) -> None:
    if not (module.training and torch.is_grad_enabled()):
        return
    compress_lora_inputs(state.swaps, state.handles, state.reported)
    if state.step or state.warned_no_step:
        return
    state.forwards += 1
    limit = 2 * longest_interval(state.config)
    if state.forwards > limit:
        state.warned_no_step = True
        warnings.warn(
            f"PRAC: {state.forwards} training forwards and step() was never called, so the subspace schedule "
            f"is stuck at step 0 (bases never refreshed; the longest refresh interval is {limit // 2} steps). "
            f"Call prac_dist.hook_optimizer(optimizer, model) once, or prac_dist.step(model) after each "
            f"optimizer step (HF Trainer: prac_dist.integrations.PRACTrainerCallback)", stacklevel=2)
