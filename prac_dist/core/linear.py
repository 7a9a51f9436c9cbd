"""PRAC linear layer as an autograd.Function.

Forward:  Y = X Wᵀ + b  (exact), saves only the compressed Z (shared per input tensor) and W.
Backward: dX = dY W (exact);  dW = (dYᵀ Z) [Q1 | Q2]ᵀ  -- out x r then r x n, never N x n.
          With an int8 compressor (no basis): dW = dYᵀ X~, X~ the dequantized, unbiased X.

The weight is passed to `apply` and saved as the Parameter itself: ZeRO-3 and FSDP2 free
and re-gather a Parameter's storage in place, so a saved view or cast would pin (or lose)
the gathered weight.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from prac_dist.core.storage import unpack
from prac_dist.core.subspace import Compressor

__all__ = ["prac_linear"]


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype F.linear would compute in here: the autocast dtype when autocast is on."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


class PRACLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, q_back, kernel: str, transposed: bool, dtype: torch.dtype, *packed):
        with torch.autocast(x.device.type, enabled=False):
            w = weight.to(dtype)
            xc = x.to(dtype)
            y = xc @ w if transposed else xc @ w.t()
            if bias is not None:
                y = y + bias.to(dtype)
        ctx.kernel, ctx.transposed, ctx.dtype = kernel, transposed, dtype
        ctx.has_bias = bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.x_dtype = x.dtype
        ctx.n_packed = len(packed)
        # Keep the basis of *this* forward (a refresh between forward and backward must not leak in), saved
        # as a tensor: torch.compile traces saved tensors, not tensors hung on ctx.
        ctx.save_for_backward(weight, q_back, *packed)
        return y

    @staticmethod
    def backward(ctx, dy):
        weight, q_back, *packed = ctx.saved_tensors
        dtype = ctx.dtype
        out_features = dy.shape[-1]
        dy2d = dy.reshape(-1, out_features).to(dtype)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            w = weight.to(dtype)
            dx = (dy2d @ w.t() if ctx.transposed else dy2d @ w).reshape(*dy.shape[:-1], -1).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            z = unpack(tuple(packed), dtype, ctx.kernel)
            g = (dy2d.t() @ z).float()  # out x r (projected) or out x n (int8 X itself)
            if q_back is not None:
                g = g @ q_back.t()  # out x n in float32
            dw = (g.t() if ctx.transposed else g).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2d.float().sum(0).to(ctx.bias_dtype)
        return (dx, dw, db, None, None, None, None) + (None,) * ctx.n_packed


def prac_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], comp: Compressor,
                transposed: bool = False, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Y = X Wᵀ + b (or X W + b for a transposed, GPT-2 Conv1D weight) with PRAC's saved Z.

    dtype: compute in this dtype instead of x's (outside autocast). A float32 LoRA matrix reading a
    bf16 X passes its own dtype, so the cast happens here and q/k/v still share one Z of one X.
    """
    if not torch.is_grad_enabled() or not weight.requires_grad:
        # Eval, or a frozen weight: dW is not needed, so nothing to compress.
        if transposed:
            y = x @ weight
            return y + bias if bias is not None else y
        return F.linear(x, weight, bias)
    if dtype is None or torch.is_autocast_enabled(x.device.type):
        dtype = compute_dtype(x)
    x2d = x.detach().reshape(-1, x.shape[-1]).to(dtype)
    comp.refresh(x2d)
    packed = comp.compress_shared(x, x2d)
    q_back = comp.q_back(x.device) if comp.projects else None
    return PRACLinearFunction.apply(x, weight, bias, q_back, comp.kernel, transposed, dtype, *packed)
