"""Lean GELU (exact or tanh): the one autograd Function of the op (PyTorch only).

Saves the input (or its stored form with compress_nonlinear); the derivative is
recomputed in float32 in backward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prac_dist.ops._saved import prepare, restored_input, saved_input

__all__ = ["LeanGELUFunction", "lean_gelu", "gelu_cast", "gelu_grad", "GELU_APPROXIMATIONS"]

# HF activation names -> the GELU variant they compute.
GELU_APPROXIMATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}
_K = math.sqrt(2.0 / math.pi)


def gelu_cast(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """GELU computed in float32 and returned in x's dtype (every GELU of prac_dist, forward and recompute)."""
    return F.gelu(x.float(), approximate=approximate).to(x.dtype)


def gelu_grad(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """d gelu(x) / dx, elementwise, in x's dtype (callers pass float32)."""
    if approximate == "tanh":
        t = torch.tanh(_K * (x + 0.044715 * x.pow(3)))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _K * (1 + 3 * 0.044715 * x * x)
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return cdf + x * pdf


class LeanGELUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, approximate, comp, seed):
        ctx.approximate, ctx.comp, ctx.shape, ctx.dtype = approximate, comp, x.shape, x.dtype
        ctx.save_for_backward(*saved_input(x, comp, seed))
        return gelu_cast(x, approximate)

    @staticmethod
    def backward(ctx, dy):
        x = restored_input(ctx.saved_tensors, ctx.comp, ctx.shape, ctx.dtype).float()
        dx = dy.float() * gelu_grad(x, ctx.approximate)
        return dx.to(ctx.dtype), None, None, None


def lean_gelu(x, approximate="tanh", comp=None):
    if not torch.is_grad_enabled():
        return gelu_cast(x, approximate)
    return LeanGELUFunction.apply(x, approximate, comp, prepare(x, comp))
