"""Lean RMSNorm and LayerNorm.

HF's LlamaRMSNorm saves float32 up-casts of its input (about 2.5 units of d·2 bytes per
token per norm, measured); this one saves the input in the model dtype plus the per-row
rstd (4 bytes/token), or, with compress_nonlinear, the input's PRAC projection.
Statistics (rstd, mean) stay exact either way.
"""

from __future__ import annotations

import torch

from prac_dist.core.storage import pack_projected
from prac_dist.kernels.dispatch import resolve_kernel
from prac_dist.kernels.rmsnorm import rmsnorm_backward, rmsnorm_forward, rmsnorm_project_forward
from prac_dist.ops._saved import restored_input, stored_input

__all__ = ["LeanRMSNormFunction", "LeanLayerNormFunction", "lean_rms_norm", "lean_layer_norm"]


class LeanRMSNormFunction(torch.autograd.Function):
    """Forward and backward are prac_dist.kernels' RMSNorm: Triton on CUDA, its PyTorch reference elsewhere.

    With a compressor on the Triton path, the norm and the projection of its input are one kernel
    (rmsnorm_project_forward): X is read once for y, rstd and Z.
    """

    @staticmethod
    def forward(ctx, x, weight, eps, comp, kernel):
        x2d = x.reshape(-1, x.shape[-1])
        if comp is None:
            y, rstd = rmsnorm_forward(x2d, weight, eps, kernel)
            saved = (x,)
        else:  # (autograd runs forward with grad off, so this compresses directly, not via stored_input)
            comp.refresh(x2d)
            if resolve_kernel(kernel, x.device) == "triton":
                y, rstd, z = rmsnorm_project_forward(x2d, weight, eps, comp.q_fwd(x.dtype, x.device), kernel)
                saved = pack_projected(z, comp.storage_bits, kernel)
            else:
                y, rstd = rmsnorm_forward(x2d, weight, eps, kernel)
                saved = comp.compress(x2d)
        ctx.comp, ctx.shape, ctx.x_dtype, ctx.kernel = comp, x.shape, x.dtype, kernel
        ctx.save_for_backward(weight, rstd, *saved)
        return y.reshape(x.shape[:-1] + y.shape[-1:])

    @staticmethod
    def backward(ctx, dy):
        weight, rstd, *saved_x = ctx.saved_tensors
        # rstd comes from the true x; only x itself may be the (unbiased) reconstruction.
        x = restored_input(tuple(saved_x), ctx.comp, ctx.shape, ctx.x_dtype).reshape(-1, ctx.shape[-1])
        dx, dw = rmsnorm_backward(dy.reshape(x.shape), x, weight, rstd, ctx.kernel)
        return dx.reshape(ctx.shape), dw, None, None, None


def lean_rms_norm(x, weight, eps, comp=None, kernel="auto"):
    if not torch.is_grad_enabled():
        return rmsnorm_forward(x.reshape(-1, x.shape[-1]), weight, eps, kernel)[0].reshape(x.shape)
    return LeanRMSNormFunction.apply(x, weight, eps, comp, kernel)


class LeanLayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, comp, *saved_x):
        xf = x.float()
        mean = xf.mean(-1, keepdim=True)
        rstd = torch.rsqrt((xf - mean).pow(2).mean(-1, keepdim=True) + eps)
        y = (xf - mean) * rstd
        if weight is not None:
            y = y * weight.float()
        if bias is not None:
            y = y + bias.float()
        ctx.comp, ctx.shape, ctx.x_dtype = comp, x.shape, x.dtype
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        ctx.save_for_backward(weight, mean, rstd, *saved_x)
        return y.to(x.dtype)

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
        return (dx.to(ctx.x_dtype), dw, db, None, None) + (None,) * len(saved_x)


def lean_layer_norm(x, weight, bias, eps, comp=None):
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        # Autocast runs layer_norm in float32; mirror it so outputs match the module we replace.
        x = x.float()
    if not torch.is_grad_enabled():
        return torch.nn.functional.layer_norm(x, x.shape[-1:], weight, bias, eps)
    return LeanLayerNormFunction.apply(x, weight, bias, eps, comp, *stored_input(x, comp))
