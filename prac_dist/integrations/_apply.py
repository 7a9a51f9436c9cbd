"""Which PRAC to apply when a framework hands us the model: one rule for the Trainer and Accelerate."""

from __future__ import annotations

import logging
from typing import Optional

from torch import nn

from prac_dist.config import PRACConfig
from prac_dist.deepspeed.config import PRACSection
from prac_dist.deepspeed.engine import prepare_model
from prac_dist.patching import apply_prac, is_prac_model

__all__ = ["check_config", "apply_once"]

logger = logging.getLogger(__name__)


def check_config(config, who: str) -> None:
    if config is not None and not isinstance(config, PRACConfig):
        raise ValueError(f"{who}: config={config!r} is a {type(config).__name__}; accepted is a PRACConfig "
                         f"(a DeepSpeed JSON's settings go in its \"prac\" section)")


def apply_once(model: nn.Module, config: Optional[PRACConfig], section: Optional[PRACSection], who: str) -> bool:
    """Apply PRAC from `config` or the DeepSpeed `section` unless the model already has it; False if switched off.

    Exactly one source is accepted: a model patched beforehand, a PRACConfig, or an enabled section.
    """
    enabled = section is not None and section.enabled
    if config is not None and enabled:
        raise ValueError(f"{who}: both a PRACConfig and an enabled DeepSpeed 'prac' section were given; "
                         f"accepted is one of them (remove the section, or drop the PRACConfig)")
    if is_prac_model(model):
        if config is not None or enabled:
            raise ValueError(f"{who}: PRAC is already applied to this model and a "
                             f"{'PRACConfig' if config is not None else 'DeepSpeed prac section'} was given too; "
                             f"accepted is one of them")
        how = "apply_prac before"
    elif config is not None:
        apply_prac(model, config)
        how = "PRACConfig"
    elif enabled:
        prepare_model(model, section)
        how = "DeepSpeed 'prac' section"
    elif section is not None:
        logger.info("%s: PRAC switched off by the DeepSpeed 'prac' section (\"enabled\": false)", who)
        return False
    else:
        raise ValueError(f"{who}: nothing to apply; accepted are a PRACConfig, a DeepSpeed config with a 'prac' "
                         f"section, or a model already patched with apply_prac")
    logger.info("%s: PRAC active (%s)", who, how)
    return True
