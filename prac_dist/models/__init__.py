"""The model registry (one table for patching, fused loss, planner shapes, FSDP layer paths) and the
model shapes by name (the LLaMA sizes of the GaLore/PRAC papers, GPT-2)."""

from prac_dist.models.registry import ARCHITECTURES, Architecture, architecture_of, supported_model_types
from prac_dist.models.shapes import PRESETS, ModelShape, build_model, get_shape, hf_config, shape_from_config

__all__ = ["ARCHITECTURES", "Architecture", "architecture_of", "supported_model_types", "PRESETS", "ModelShape",
           "get_shape", "shape_from_config", "hf_config", "build_model"]
