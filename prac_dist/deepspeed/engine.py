"""`prac_dist.deepspeed.initialize`: `deepspeed.initialize` with the config's "prac" section switched on.

Order matters, and is why this wrapper exists:
1. read and validate the "prac" section (a bad key stops here, before any step);
2. `apply_prac` on the bare model, BEFORE `deepspeed.initialize`: ZeRO-3 registers its
   parameter fetch/release hooks on every submodule once, at engine construction, so the
   PRAC modules must already be in place (under `zero.Init` their sizes come from `ds_shape`);
3. `deepspeed.initialize` with the caller's arguments, untouched;
4. wire the engine: `engine.step` advances the subspace schedule whenever DeepSpeed
   counted an optimizer step (`global_steps` grew: only at gradient-accumulation
   boundaries), and `save_checkpoint` / `load_checkpoint` carry PRAC's per-rank state.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from typing import Any, Optional

from torch import nn

from prac_dist.checkpoint import load_prac_state, save_prac_state
from prac_dist.deepspeed.config import PRACSection, parse_prac_section
from prac_dist.deepspeed.offload import CompressedActivationOffload

__all__ = ["initialize", "prepare_model", "wire_engine", "section_from_arguments"]

logger = logging.getLogger(__name__)
_WIRED = "_prac_wired"


def initialize(args: Any = None, model: Optional[nn.Module] = None, optimizer: Any = None,
               model_parameters: Any = None, training_data: Any = None, lr_scheduler: Any = None,
               distributed_port: int = 29500, mpu: Any = None, dist_init_required: Optional[bool] = None,
               collate_fn: Any = None, config: Any = None, mesh_param: Any = None, config_params: Any = None,
               **kwargs: Any):
    """Drop-in for `deepspeed.initialize` (same arguments, same 4-tuple) that honours the "prac" section.

    A model the caller already patched with `apply_prac` (and a config without an enabled
    "prac" section) is wired the same way: schedule and checkpoints, no second patch.
    """
    import deepspeed

    if model is None:
        raise ValueError("prac_dist.deepspeed.initialize: model is required (as for deepspeed.initialize)")
    section = section_from_arguments(args, config, config_params)
    prepare_model(model, section)
    engine, opt, loader, scheduler = deepspeed.initialize(
        args=args, model=model, optimizer=optimizer, model_parameters=model_parameters,
        training_data=training_data, lr_scheduler=lr_scheduler, distributed_port=distributed_port, mpu=mpu,
        dist_init_required=dist_init_required, collate_fn=collate_fn, config=config, mesh_param=mesh_param,
        config_params=config_params, **kwargs)
    from prac_dist import is_prac_model

    if is_prac_model(engine.module):
        wire_engine(engine)
    return engine, opt, loader, scheduler


def section_from_arguments(args: Any, config: Any, config_params: Any) -> Optional[PRACSection]:
    """The "prac" section of whichever config deepspeed.initialize would use (same precedence)."""
    if config is None:
        config = config_params
    for attr in ("deepspeed_config", "deepscale_config"):
        value = getattr(args, attr, None)
        if value is not None and config is None:
            config = value
    if config is None:
        return None  # deepspeed.initialize raises its own error for a missing config
    return parse_prac_section(config)


def prepare_model(model: nn.Module, section: Optional[PRACSection]) -> Optional[CompressedActivationOffload]:
    """Apply PRAC (and the compressed activation offload) from a parsed section; before the engine exists."""
    from prac_dist import apply_prac, is_prac_model

    if section is None or not section.enabled:
        return None
    if is_prac_model(model):
        raise ValueError(
            "the DeepSpeed config has an enabled 'prac' section but PRAC is already applied to this model; "
            "either remove the section (or set \"enabled\": false) or pass the model before apply_prac"
        )
    apply_prac(model, section.config)
    if section.offload.enabled:
        return CompressedActivationOffload(section.offload).attach(model)
    return None


def wire_engine(engine, checkpoints: bool = True) -> None:
    """Make the engine advance the PRAC schedule per optimizer step and (checkpoints) checkpoint PRAC state.

    checkpoints=False: the caller saves PRAC's state itself (Accelerate's save_state hooks do).
    """
    if getattr(engine, _WIRED, False):
        return
    _wrap_step(engine)
    if checkpoints:
        _wrap_save(engine)
        _wrap_load(engine)
    setattr(engine, _WIRED, True)


def _wrap_step(engine) -> None:
    from prac_dist import step as prac_step

    inner = engine.step

    @functools.wraps(inner)
    def step(*args, **kwargs):
        before = engine.global_steps
        out = inner(*args, **kwargs)
        # global_steps grows once per optimizer step: at an accumulation boundary, and also for
        # an fp16 step skipped on overflow (DeepSpeed counts it; the schedule follows DeepSpeed's count).
        if engine.global_steps != before:
            prac_step(engine.module)
        return out

    engine.step = step


def _wrap_save(engine) -> None:
    inner = engine.save_checkpoint
    signature = inspect.signature(inner)

    @functools.wraps(inner)
    def save_checkpoint(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        tag = bound.arguments.get("tag")
        # DeepSpeed's own default tag, resolved before the call (save does not change global_steps).
        tag = f"global_step{engine.global_steps}" if tag is None else str(tag)
        out = inner(*args, **kwargs)
        save_prac_state(engine.module, os.path.join(bound.arguments["save_dir"], tag))
        return out

    engine.save_checkpoint = save_checkpoint


def _wrap_load(engine) -> None:
    inner = engine.load_checkpoint
    signature = inspect.signature(inner)

    @functools.wraps(inner)
    def load_checkpoint(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        out = inner(*args, **kwargs)
        load_path = out[0] if isinstance(out, tuple) else out
        if load_path is None or bound.arguments.get("load_module_only", False):
            return out  # nothing loaded, or a warm start of the weights only: a fresh PRAC schedule
        load_dir = bound.arguments["load_dir"]
        tag = bound.arguments.get("tag")
        if tag is None:
            with open(os.path.join(load_dir, "latest"), "r") as fh:
                tag = fh.read().strip()
        load_prac_state(engine.module, os.path.join(load_dir, str(tag)))
        return out

    engine.load_checkpoint = load_checkpoint
