"""Accelerate: one call in place of `accelerator.prepare` that brings PRAC along.

    model, optimizer, loader = prepare_accelerate(accelerator, model, optimizer, loader)   # DeepSpeed JSON "prac"
    model, optimizer, loader = prepare_accelerate(accelerator, model, optimizer, loader, config=PRACConfig())

Before `accelerator.prepare`: apply PRAC from the PRACConfig or from the "prac" section of the
DeepSpeed plugin's JSON (`accelerate launch --use_deepspeed --deepspeed_config_file ds.json`),
so ZeRO-3 registers its hooks on the PRAC modules. After it:
- schedule: one step per optimizer step, gradient accumulation respected. With DeepSpeed the
  engine's `step` advances it when DeepSpeed counted an optimizer step (as
  prac_dist.deepspeed.initialize does); otherwise a post-hook on the torch optimizer inside
  Accelerate's wrapper, which runs it only when gradients are synchronised;
- checkpoints: `accelerator.save_state(dir)` writes each rank's PRAC state as
  `dir/prac_rank<R>.pt` (the format of every other prac_dist checkpoint), and
  `accelerator.load_state(dir)` reads it back, through Accelerate's save/load state hooks.
"""

from __future__ import annotations

from typing import Optional

from prac_dist.config import PRACConfig
from prac_dist.checkpoint import load_prac_state, save_prac_state
from prac_dist.deepspeed.config import PRACSection, parse_prac_section
from prac_dist.deepspeed.engine import wire_engine
from prac_dist.integrations._apply import apply_once, check_config
from prac_dist.patching import hook_optimizer

__all__ = ["prepare_accelerate", "deepspeed_section"]

_WHO = "prepare_accelerate"


def deepspeed_section(accelerator) -> Optional[PRACSection]:
    """The "prac" section of the Accelerate DeepSpeed plugin's config; None without the plugin or the section."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return None
    return parse_prac_section(plugin.deepspeed_config)


def prepare_accelerate(accelerator, model, *objects, config: Optional[PRACConfig] = None):
    """`accelerator.prepare(model, *objects)` with PRAC applied, scheduled and checkpointed; same return value.

    The optimizer must be among `objects` (without DeepSpeed it is what advances the schedule).
    """
    check_config(config, _WHO)
    if not apply_once(model, config, deepspeed_section(accelerator), _WHO):
        return accelerator.prepare(model, *objects)
    prepared = accelerator.prepare(model, *objects)
    items = prepared if isinstance(prepared, tuple) else (prepared,)
    if _is_deepspeed_engine(items[0]):
        wire_engine(items[0], checkpoints=False)  # save_state/load_state hooks below carry the state
    else:
        optimizers = [o.optimizer for o in items[1:] if type(o).__name__ == "AcceleratedOptimizer"]
        if len(optimizers) != 1:
            raise ValueError(f"{_WHO}: found {len(optimizers)} optimizers among the objects to prepare; accepted is "
                             f"exactly one (it advances PRAC's schedule), or call prac_dist.hook_optimizer yourself")
        hook_optimizer(optimizers[0], model)
    accelerator.register_save_state_pre_hook(lambda _models, _weights, directory: save_prac_state(model, directory))
    accelerator.register_load_state_pre_hook(lambda _models, directory: load_prac_state(model, directory))
    return prepared


def _is_deepspeed_engine(module) -> bool:
    return any(cls.__name__ == "DeepSpeedEngine" for cls in type(module).__mro__)
