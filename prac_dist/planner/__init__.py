"""Memory planner: predicted peak memory per PRAC / checkpointing setting, and the pick that fits. Model shapes
live in prac_dist.models (PRESETS, ModelShape, shape_from_config, build_model)."""

from .activations import Setting, saved_bytes
from .plan import Plan, PlanRow, plan

__all__ = ["plan", "Plan", "PlanRow", "Setting", "saved_bytes"]
