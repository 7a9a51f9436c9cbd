"""The model registry (one table for patching, fused loss, planner shapes, FSDP layer paths) and where a
model keeps its decoder blocks (layers.py). `prac_dist.supported_model_types()` lists the registered families."""

from prac_dist.models.layers import find_decoder_layers
from prac_dist.models.registry import ARCHITECTURES, Architecture, architecture_of

__all__ = ["ARCHITECTURES", "Architecture", "architecture_of", "find_decoder_layers"]
