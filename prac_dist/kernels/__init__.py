"""Triton kernels for PRAC, each with a PyTorch reference computing the same function.

Every entry point takes `kernel="auto" | "triton" | "torch"` and dispatches through
`resolve_kernel`: Triton on CUDA when it imports, the PyTorch reference elsewhere.

- `fused_project` / `dequantize`: Z = X·[Q1 | c·Q2] in one pass, optionally stored
  as int8 with per-row scales and stochastic rounding (E[stored] = Z).
- `rmsnorm_forward` / `rmsnorm_backward`, `swiglu_forward` / `swiglu_backward`: lean
  norm and activation ops that save only their inputs (and rstd).
- `rmsnorm_project_forward`, `swiglu_project_forward`: the norm / SwiGLU with their inputs' PRAC
  projections fused in (inputs read once).
- `principal_basis` / `randomized_principal_basis` / `captured_energy`: the exact and the fast
  principal-subspace refresh, and the share of ‖X‖² a basis captures.
"""

from .dispatch import resolve_kernel, triton_available
from .projection import dequantize, fused_project, quantize
from .rmsnorm import rmsnorm_backward, rmsnorm_forward, rmsnorm_project_forward
from .subspace import captured_energy, principal_basis, randomized_principal_basis
from .swiglu import swiglu_backward, swiglu_forward, swiglu_project_forward

__all__ = [
    "fused_project",
    "quantize",
    "dequantize",
    "rmsnorm_forward",
    "rmsnorm_backward",
    "rmsnorm_project_forward",
    "swiglu_forward",
    "swiglu_backward",
    "swiglu_project_forward",
    "randomized_principal_basis",
    "principal_basis",
    "captured_energy",
    "triton_available",
    "resolve_kernel",
]
