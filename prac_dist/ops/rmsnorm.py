"""Lean RMSNorm: the one autograd Function of the op (kernel='torch' is the reference).

HF's LlamaRMSNorm saves float32 up-casts of its input (more than the input itself in bf16);
this saves the input in the model dtype plus the per-row rstd (4 bytes per token), or, with
compress_nonlinear, the input's stored form (int8 of x, or its PRAC projection). rstd comes
from the true x either way, so the statistics stay exact.
"""

from __future__ import annotations

import torch

from prac_dist.core.storage import pack_projected
from prac_dist.kernels.dispatch import resolve_kernel
from prac_dist.kernels.rmsnorm import rmsnorm_backward, rmsnorm_forward, rmsnorm_project_forward
from prac_dist.ops._saved import prepare, restored_input, saved_input

__all__ = ["LeanRMSNormFunction", "lean_rms_norm"]


class LeanRMSNormFunction(torch.autograd.Function):
    """Forward and backward are prac_dist.kernels' RMSNorm: Triton on CUDA, its PyTorch reference elsewhere.

    With a projecting compressor on the Triton path, the norm and the projection of its input are one
    kernel (rmsnorm_project_forward): X is read once for y, rstd and Z.
    """

    @staticmethod
    def forward(ctx, x, weight, eps, comp, kernel, seed):
        x2d = x.reshape(-1, x.shape[-1])
        # (autograd runs forward with grad off, so this compresses directly; `prepare` refreshed comp)
        if comp is not None and comp.projects and resolve_kernel(kernel, x.device) == "triton":
            y, rstd, z = rmsnorm_project_forward(x2d, weight, eps, comp.q_fwd(x.dtype, x.device), kernel)
            saved = pack_projected(z, comp.storage_bits, kernel, seed)
        else:
            y, rstd = rmsnorm_forward(x2d, weight, eps, kernel)
            saved = saved_input(x, comp, seed)
        ctx.comp, ctx.shape, ctx.x_dtype, ctx.kernel = comp, x.shape, x.dtype, kernel
        ctx.save_for_backward(weight, rstd, *saved)
        return y.reshape(x.shape[:-1] + y.shape[-1:])

    @staticmethod
    def backward(ctx, dy):
        weight, rstd, *saved_x = ctx.saved_tensors
        x = restored_input(tuple(saved_x), ctx.comp, ctx.shape, ctx.x_dtype).reshape(-1, ctx.shape[-1])
        dx, dw = rmsnorm_backward(dy.reshape(x.shape), x, weight, rstd, ctx.kernel)
        return dx.reshape(ctx.shape), dw, None, None, None, None


def lean_rms_norm(x, weight, eps, comp=None, kernel="auto"):
    if not torch.is_grad_enabled():
        return rmsnorm_forward(x.reshape(-1, x.shape[-1]), weight, eps, kernel)[0].reshape(x.shape)
    return LeanRMSNormFunction.apply(x, weight, eps, comp, kernel, prepare(x, comp))
