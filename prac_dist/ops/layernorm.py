"""Lean LayerNorm: the one autograd Function of the op (PyTorch only; no Triton kernel).

Saves the input (or, with compress_nonlinear, its stored form) plus the exact per-row
mean and rstd in float32. Training and evaluation compute y with the same `_forward`.
"""

from __future__ import annotations

import torch

from prac_dist.ops._saved import prepare, restored_input, saved_input

__all__ = ["LeanLayerNormFunction", "lean_layer_norm"]


def _forward(x, weight, bias, eps):
    """(y in x's dtype, per-row mean, rstd), computed in float32."""
    xf = x.float()
    mean = xf.mean(-1, keepdim=True)
    rstd = torch.rsqrt((xf - mean).pow(2).mean(-1, keepdim=True) + eps)
    y = (xf - mean) * rstd
    if weight is not None:
        y = y * weight.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype), mean, rstd


class LeanLayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, comp, seed):
        y, mean, rstd = _forward(x, weight, bias, eps)
        saved_x = saved_input(x, comp, seed)
        ctx.comp, ctx.shape, ctx.x_dtype = comp, x.shape, x.dtype
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        ctx.save_for_backward(weight, mean, rstd, *saved_x)
        return y

    @staticmethod
    def backward(ctx, dy):
        weight, mean, rstd, *saved_x = ctx.saved_tensors
        x = restored_input(tuple(saved_x), ctx.comp, ctx.shape, ctx.x_dtype)
        xhat = (x.float() - mean) * rstd
        dyf = dy.float()
        n = xhat.shape[-1]
        g = dyf * weight.float() if ctx.has_weight else dyf
        dx = rstd * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))
        dw = (dyf * xhat).reshape(-1, n).sum(0).to(weight.dtype) if ctx.has_weight else None
        db = dyf.reshape(-1, n).sum(0).to(weight.dtype if ctx.has_weight else ctx.x_dtype) if ctx.has_bias else None
        return dx.to(ctx.x_dtype), dw, db, None, None, None


def lean_layer_norm(x, weight, bias, eps, comp=None):
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        # Autocast runs layer_norm in float32; mirror it so outputs match the module we replace.
        x = x.float()
    if not torch.is_grad_enabled():
        return _forward(x, weight, bias, eps)[0]
    return LeanLayerNormFunction.apply(x, weight, bias, eps, comp, prepare(x, comp))
