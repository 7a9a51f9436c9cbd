"""One lean autograd Function per nonlinear op of a decoder, one file each.

rmsnorm.py, layernorm.py, swiglu.py, gelu.py, and gelu_linear.py (a GELU MLP's GELU and down projection
as one op that saves h only). With kernel='torch' each is the reference the
Triton kernels (prac_dist.kernels) are tested against. The linear's Function is the PRAC math
itself and lives in prac_dist.core.linear.
"""

from prac_dist.ops.gelu import lean_gelu
from prac_dist.ops.layernorm import lean_layer_norm
from prac_dist.ops.rmsnorm import lean_rms_norm
from prac_dist.ops.swiglu import lean_swiglu

__all__ = ["lean_rms_norm", "lean_layer_norm", "lean_swiglu", "lean_gelu"]
