"""prac_dist: PRAC activation compression for LLM training under DeepSpeed ZeRO and FSDP2.

    from prac_dist import PRACConfig, apply_prac, step
    model = apply_prac(model, PRACConfig())      # before deepspeed.initialize / fully_shard
    hook_optimizer(optimizer, model)             # or call step(model) after each optimizer step
"""

from prac_dist.config import PRACConfig
from prac_dist.models.registry import supported_model_types
from prac_dist.patching import (apply_prac, hook_optimizer, is_prac_model, load_prac_state_dict, prac_state_dict,
                                prac_stats, remove_prac, step)

__version__ = "0.1.0"

__all__ = [
    "PRACConfig",
    "apply_prac",
    "remove_prac",
    "step",
    "hook_optimizer",
    "prac_state_dict",
    "load_prac_state_dict",
    "prac_stats",
    "is_prac_model",
    "supported_model_types",
]
