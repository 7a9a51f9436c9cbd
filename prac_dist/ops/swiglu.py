"""Lean SwiGLU: the one autograd Function of the op (kernel='torch' is the reference).

HF's LlamaMLP saves the gate output, the SiLU output and the up output (3 x ffn per
token); the lean SwiGLU saves gate and up only and recomputes SiLU in backward
(2 x ffn), or their stored forms (int8, or PRAC projections) with compress_nonlinear.
Its arithmetic is prac_dist.kernels.swiglu (Triton on CUDA with kernel='auto').
"""

from __future__ import annotations

import torch

from prac_dist.core.storage import pack_projected
from prac_dist.kernels.dispatch import resolve_kernel
from prac_dist.kernels.swiglu import swiglu_backward, swiglu_forward, swiglu_project_forward
from prac_dist.ops._saved import prepare, restored_input, saved_input

__all__ = ["LeanSwiGLUFunction", "lean_swiglu"]


class LeanSwiGLUFunction(torch.autograd.Function):
    """Forward and backward are prac_dist.kernels' SwiGLU: Triton on CUDA, its PyTorch reference elsewhere.

    With projecting compressors on the Triton path, h and both inputs' projections are one kernel
    (swiglu_project_forward): g and u are read once.
    """

    @staticmethod
    def forward(ctx, g, u, comp_g, comp_u, kernel, seed_g, seed_u):
        # (autograd runs forward with grad off: compress directly; `prepare` refreshed the compressors)
        n = g.shape[-1]
        g2d, u2d = g.reshape(-1, n), u.reshape(-1, n)
        if (comp_g is not None and comp_u is not None and comp_g.projects and comp_u.projects
                and resolve_kernel(kernel, g.device) == "triton"):
            h, zg, zu = swiglu_project_forward(g2d, u2d, comp_g.q_fwd(g.dtype, g.device),
                                               comp_u.q_fwd(u.dtype, u.device), kernel)
            saved_g = pack_projected(zg, comp_g.storage_bits, kernel, seed_g)
            saved_u = pack_projected(zu, comp_u.storage_bits, kernel, seed_u)
            h = h.reshape(g.shape)
        else:
            h = swiglu_forward(g, u, kernel)
            saved_g, saved_u = saved_input(g, comp_g, seed_g), saved_input(u, comp_u, seed_u)
        ctx.comps, ctx.n_g, ctx.shape, ctx.dtype, ctx.kernel = (comp_g, comp_u), len(saved_g), g.shape, g.dtype, kernel
        ctx.save_for_backward(*saved_g, *saved_u)
        return h

    @staticmethod
    def backward(ctx, dh):
        saved = ctx.saved_tensors
        comp_g, comp_u = ctx.comps
        g = restored_input(saved[: ctx.n_g], comp_g, ctx.shape, ctx.dtype)
        u = restored_input(saved[ctx.n_g:], comp_u, ctx.shape, ctx.dtype)
        dg, du = swiglu_backward(dh, g, u, ctx.kernel)
        return dg, du, None, None, None, None, None


def lean_swiglu(g, u, comp_g=None, comp_u=None, kernel="auto"):
    if not torch.is_grad_enabled():
        return swiglu_forward(g, u, kernel)
    return LeanSwiGLUFunction.apply(g, u, comp_g, comp_u, kernel, prepare(g, comp_g), prepare(u, comp_u))
