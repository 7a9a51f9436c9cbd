"""Memory planner: predicted peak memory per PRAC / checkpointing setting, and the pick that fits."""

from .activations import Setting, saved_bytes
from .plan import Plan, PlanRow, plan
from prac_dist.models.shapes import PRESETS, ModelShape, build_model, shape_from_config

__all__ = ["plan", "Plan", "PlanRow", "Setting", "saved_bytes", "ModelShape", "PRESETS", "shape_from_config",
           "build_model"]
