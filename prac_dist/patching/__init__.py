"""Model patching: the architecture table and the module swaps."""

from prac_dist.patching.apply import (apply_prac, get_prac_state, hook_optimizer, is_prac_model, load_prac_state_dict,
                                      nonfinite_refreshes, prac_state_dict, prac_stats, remove_prac,
                                      step)
from prac_dist.models.registry import ARCHITECTURES, Architecture, supported_model_types

__all__ = ["apply_prac", "remove_prac", "step", "hook_optimizer", "prac_state_dict", "load_prac_state_dict",
           "prac_stats", "nonfinite_refreshes", "is_prac_model", "get_prac_state", "ARCHITECTURES", "Architecture",
           "supported_model_types"]
