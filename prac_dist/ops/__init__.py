"""One lean autograd Function per nonlinear op of a decoder, one file each.

rmsnorm.py, layernorm.py, swiglu.py, gelu.py, and gelu_linear.py (a GELU MLP's GELU and down projection
as one op that saves h only). With kernel='torch' each is the reference the
Triton kernels (prac_dist.kernels) are tested against. The linear's Function is the PRAC math
itself and lives in prac_dist.core.linear.
Nothing is exported here: prac_dist.patching installs these ops, importing each from its file.
"""

__all__ = []
