"""The model registry (one table for patching, fused loss, planner shapes, FSDP layer paths)."""

from prac_dist.models.registry import ARCHITECTURES, Architecture, architecture_of, supported_model_types

__all__ = ["ARCHITECTURES", "Architecture", "architecture_of", "supported_model_types"]
