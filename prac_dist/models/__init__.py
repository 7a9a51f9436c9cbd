"""The model registry (one table for patching, fused loss, planner shapes, FSDP layer paths), the model
shapes by name (the LLaMA sizes of the GaLore/PRAC papers, GPT-2) and where a model keeps its decoder blocks
(layers.py). `prac_dist.supported_model_types()` lists the registered families."""

from prac_dist.models.layers import find_decoder_layers
from prac_dist.models.registry import ARCHITECTURES, Architecture, architecture_of
from prac_dist.models.shapes import PRESETS, ModelShape, build_model, get_shape, hf_config, shape_from_config

__all__ = ["ARCHITECTURES", "Architecture", "architecture_of", "find_decoder_layers", "PRESETS", "ModelShape",
           "get_shape", "shape_from_config", "hf_config", "build_model"]
