"""down(gelu(h)) saving h only: the GELU MLP's second linear never stores its input.

A GELU MLP saves h for the GELU's backward and gelu(h) for the down projection's dW (2 x ffn per
token). gelu(h) is an elementwise function of h, so backward recomputes it (O(N·ffn), no matmul)
and dW = dYᵀ gelu(h) stays exact: 1 x ffn per token, the same bytes as compressing both at PRAC's
0.4 + 0.6 ratios, with exact gradients and no projections.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from prac_dist.core.linear import compute_dtype
from prac_dist.ops.gelu import gelu_cast, gelu_grad

__all__ = ["GELULinearFunction", "gelu_linear"]


class GELULinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, approximate, transposed, dtype):
        with torch.autocast(h.device.type, enabled=False):
            a = gelu_cast(h, approximate).to(dtype)
            w = weight.to(dtype)
            y = a @ w if transposed else a @ w.t()
            if bias is not None:
                y = y + bias.to(dtype)
        ctx.approximate, ctx.transposed, ctx.dtype = approximate, transposed, dtype
        ctx.has_bias, ctx.bias_dtype = bias is not None, None if bias is None else bias.dtype
        ctx.save_for_backward(h, weight)  # the Parameter itself: ZeRO-3 / FSDP2 re-gather it in place
        return y

    @staticmethod
    def backward(ctx, dy):
        h, weight = ctx.saved_tensors
        n = h.shape[-1]
        dy2d = dy.reshape(-1, dy.shape[-1]).to(ctx.dtype)
        w = weight.to(ctx.dtype)
        dh = dw = db = None
        if ctx.needs_input_grad[0]:
            da = dy2d @ w.t() if ctx.transposed else dy2d @ w
            dh = (da.float() * gelu_grad(h.reshape(-1, n).float(), ctx.approximate)).to(h.dtype).reshape(h.shape)
        if ctx.needs_input_grad[1]:
            a = gelu_cast(h, ctx.approximate).reshape(-1, n).to(ctx.dtype)
            g = dy2d.t() @ a  # out x in
            dw = (g.t() if ctx.transposed else g).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2d.float().sum(0).to(ctx.bias_dtype)
        return dh, dw, db, None, None, None


def gelu_linear(h: torch.Tensor, approximate: str, weight: torch.Tensor, bias: Optional[torch.Tensor],
                transposed: bool = False) -> torch.Tensor:
    """gelu(h) Wᵀ + b (X W + b for a transposed Conv1D weight), saving only h for backward."""
    if not torch.is_grad_enabled():
        a = gelu_cast(h, approximate)
        return (a @ weight + bias if bias is not None else a @ weight) if transposed else F.linear(a, weight, bias)
    return GELULinearFunction.apply(h, weight, bias, approximate, transposed, compute_dtype(h))
