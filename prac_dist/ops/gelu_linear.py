"""down(gelu(h)) saving h only: the GELU MLP's second linear never stores its input.

A GELU MLP saves h for the GELU's backward and gelu(h) for the down projection's dW (2 x ffn per
token). gelu(h) is an elementwise function of h, so backward recomputes it (O(N·ffn), no matmul):
h alone serves both. Without a compressor h is kept exactly: 1 x ffn per token, the same bytes as
compressing both at PRAC's 0.4 + 0.6 ratios, with exact gradients and no projections.

With an int8 compressor (nonlinear_storage='int8') h is kept as int8 codes k with per-row scales s,
n + 4 bytes per token instead of 2n (bfloat16), and one copy serves both backward uses. The rounding
is stochastic in the GELU's image, not in h: between the grid points lo = floor(h/s)·s and lo + s it
rounds up with probability p = (gelu(h) - gelu(lo)) / (gelu(lo + s) - gelu(lo)), so
E[gelu(h~)] = gelu(h) and the down projection's dW = dYᵀ gelu(h~) stays an unbiased estimate, as
every compressed linear's dW is. Plain rounding of h (p = h/s - floor(h/s)) would bias it by
gelu''·Var(h~)/2 per element. Only the one cell per row where GELU turns (its minimum at h = -0.752,
where the chord cannot reach gelu(h)) clamps p, a bias below gelu''·s²/8 (5e-5 at s = 0.03). The
GELU's own dh = dA · gelu'(h~) is a nonlinear function of the stored form, like every int8 nonlinear
input's (paper: no theory for those). The extra work is elementwise (two GELUs per element in
forward); the matmuls are the exact op's.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from prac_dist.core.linear import compute_dtype
from prac_dist.core.storage import mark_compressed
from prac_dist.core.subspace import Compressor
from prac_dist.kernels.projection import rounding_key_of, rounding_noise
from prac_dist.ops._saved import prepare
from prac_dist.ops.gelu import gelu_cast, gelu_grad

__all__ = ["GELULinearFunction", "gelu_linear", "quantize_through_gelu"]

_QMAX = 127.0  # the symmetric int8 grid of prac_dist.kernels.projection


@torch.no_grad()
def quantize_through_gelu(h2d: torch.Tensor, approximate: str, seed) -> tuple:
    """(int8 codes, float32 row scales) of h2d, rounded so that gelu of the decoded h is unbiased for gelu(h2d).

    The grid points are taken as dequantize returns them (k·s cast to h2d's dtype), so the expectation holds
    for the values backward sees."""
    hf = h2d.float()
    amax = hf.abs().amax(dim=1) if h2d.shape[1] else hf.new_zeros(h2d.shape[0])
    scale = amax / _QMAX
    v = (hf / torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]).clamp(-_QMAX, _QMAX)
    lo = torch.floor(v).clamp(max=_QMAX - 1)  # the top cell is [126, 127]: a code never leaves the int8 grid
    at = lambda k: F.gelu((k * scale[:, None]).to(h2d.dtype).float(), approximate=approximate)  # noqa: E731
    g_lo, g_hi = at(lo), at(lo + 1)
    rise = g_hi - g_lo
    # a flat chord (an all-zero row, or a cell whose ends GELU maps to one float) rounds by h's own position
    p = torch.where(rise.abs() > 0, (F.gelu(hf, approximate=approximate) - g_lo) / rise, v - lo).clamp(0.0, 1.0)
    u = rounding_noise(rounding_key_of(seed, h2d.device), *h2d.shape)
    codes = (lo + (u < p).float()).to(torch.int8)
    return mark_compressed(codes), mark_compressed(scale)


class GELULinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, approximate, transposed, dtype, comp, seed):
        with torch.autocast(h.device.type, enabled=False):
            a = gelu_cast(h, approximate).to(dtype)
            w = weight.to(dtype)
            y = a @ w if transposed else a @ w.t()
            if bias is not None:
                y = y + bias.to(dtype)
        ctx.approximate, ctx.transposed, ctx.dtype, ctx.comp = approximate, transposed, dtype, comp
        ctx.has_bias, ctx.bias_dtype = bias is not None, None if bias is None else bias.dtype
        ctx.h_shape, ctx.h_dtype = h.shape, h.dtype
        stored = (h,) if comp is None else quantize_through_gelu(h.reshape(-1, h.shape[-1]), approximate, seed)
        ctx.save_for_backward(weight, *stored)  # the Parameter itself: ZeRO-3 / FSDP2 re-gather it in place
        return y

    @staticmethod
    def backward(ctx, dy):
        weight, *stored = ctx.saved_tensors
        h = stored[0] if ctx.comp is None else ctx.comp.decompress(tuple(stored), ctx.h_dtype)
        n = ctx.h_shape[-1]
        dy2d = dy.reshape(-1, dy.shape[-1]).to(ctx.dtype)
        w = weight.to(ctx.dtype)
        dh = dw = db = None
        if ctx.needs_input_grad[0]:
            da = dy2d @ w.t() if ctx.transposed else dy2d @ w
            dh = (da.float() * gelu_grad(h.reshape(-1, n).float(), ctx.approximate)).to(ctx.h_dtype)
            dh = dh.reshape(ctx.h_shape)
        if ctx.needs_input_grad[1]:
            a = gelu_cast(h, ctx.approximate).reshape(-1, n).to(ctx.dtype)
            g = dy2d.t() @ a  # out x in
            dw = (g.t() if ctx.transposed else g).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2d.float().sum(0).to(ctx.bias_dtype)
        return dh, dw, db, None, None, None, None, None


def gelu_linear(h: torch.Tensor, approximate: str, weight: torch.Tensor, bias: Optional[torch.Tensor],
                transposed: bool = False, comp: Optional[Compressor] = None) -> torch.Tensor:
    """gelu(h) Wᵀ + b (X W + b for a transposed Conv1D weight), saving only h (or its int8 form with an int8
    compressor) for backward."""
    if not torch.is_grad_enabled():
        a = gelu_cast(h, approximate)
        return (a @ weight + bias if bias is not None else a @ weight) if transposed else F.linear(a, weight, bias)
    if comp is not None and comp.projects:
        raise ValueError(f"gelu_linear: compressor {comp.name!r} projects; h is stored exactly or in int8 "
                         f"(gelu of a projection would bias dW)")
    return GELULinearFunction.apply(h, weight, bias, approximate, transposed, compute_dtype(h), comp,
                                    prepare(h, comp))
