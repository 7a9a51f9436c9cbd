"""Lean autograd Functions for the nonlinear layers of a decoder (RMSNorm, LayerNorm, SwiGLU, GELU)."""

from prac_dist.ops.activation import LeanGELUFunction, LeanSwiGLUFunction
from prac_dist.ops.norm import LeanLayerNormFunction, LeanRMSNormFunction

__all__ = ["LeanRMSNormFunction", "LeanLayerNormFunction", "LeanSwiGLUFunction", "LeanGELUFunction"]
