"""Lean SwiGLU: h = silu(g) * u, saving (g, u) and recomputing silu in backward.

    h  = (silu(g.float()) * u.float()).to(g.dtype)          one rounding, not HF's two
    du = dh · silu(g),   dg = dh · u · σ(g) · (1 + g · (1 - σ(g)))      (float32)

HF's LlamaMLP keeps gate, silu(gate) and up (3 x ffn per token); this keeps 2 x ffn,
or their PRAC projections when the core compresses them (compress_nonlinear).
Elementwise and memory-bound: one read of each input, one write of each output.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .dispatch import jitted, resolve_kernel

try:  # optional dependency: the PyTorch references below work without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = tl = None

__all__ = ["swiglu_forward", "swiglu_backward", "torch_swiglu_forward", "torch_swiglu_backward", "SwiGLUFunction"]

_BLOCK = 1024  # elements per program: 4 warps x 32 lanes x 8 elements, 16-byte bf16 vectors


# ----------------------------------------------------------------------------- Triton kernels
def _swiglu_forward_kernel(g_ptr, u_ptr, h_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    h = g * tl.sigmoid(g) * u
    tl.store(h_ptr + offs, h.to(h_ptr.dtype.element_ty), mask=mask)


def _swiglu_backward_kernel(dh_ptr, g_ptr, u_ptr, dg_ptr, du_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    dh = tl.load(dh_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    tl.store(du_ptr + offs, (dh * g * s).to(du_ptr.dtype.element_ty), mask=mask)
    tl.store(dg_ptr + offs, (dh * u * (s * (1.0 + g * (1.0 - s)))).to(dg_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- host launchers
def _triton_swiglu_forward(g, u):
    h = torch.empty_like(g)
    numel = g.numel()
    if numel:
        jitted(_swiglu_forward_kernel)[(triton.cdiv(numel, _BLOCK),)](g, u, h, numel, BLOCK=_BLOCK)
    return h


def _triton_swiglu_backward(dh, g, u):
    dg, du = torch.empty_like(g), torch.empty_like(u)
    numel = g.numel()
    if numel:
        jitted(_swiglu_backward_kernel)[(triton.cdiv(numel, _BLOCK),)](dh, g, u, dg, du, numel, BLOCK=_BLOCK)
    return dg, du


# ----------------------------------------------------------------------------- PyTorch references
def torch_swiglu_forward(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Reference forward: silu and the product in float32, one rounding to g's dtype.

    F.silu, then the product: in float32 this is HF's LlamaMLP bit for bit (act_fn(gate) * up).
    """
    gf = g.float()
    return (F.silu(gf) * u.float()).to(g.dtype)


def torch_swiglu_backward(dh, g, u) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference backward: (dg, du) in the inputs' dtypes, silu recomputed in float32."""
    gf, uf, dhf = g.float(), u.float(), dh.float()
    s = torch.sigmoid(gf)
    # The same association autograd uses through HF's silu(g) * u, so float32 matches it exactly.
    return (dhf * uf * (s * (1.0 + gf * (1.0 - s)))).to(g.dtype), (dhf * F.silu(gf)).to(u.dtype)


# ----------------------------------------------------------------------------- public entry points
def swiglu_forward(g: torch.Tensor, u: torch.Tensor, kernel: str = "auto") -> torch.Tensor:
    """h = silu(g) * u for tensors of any (equal) shape and dtype."""
    _check(g=g, u=u)
    if resolve_kernel(kernel, g.device) == "torch":
        return torch_swiglu_forward(g, u)
    return _triton_swiglu_forward(g.contiguous(), u.contiguous())


def swiglu_backward(dh: torch.Tensor, g: torch.Tensor, u: torch.Tensor, kernel: str = "auto"):
    """(dg, du) of h = silu(g) * u given the saved (possibly reconstructed) g and u."""
    _check(g=g, u=u, dh=dh)
    if resolve_kernel(kernel, g.device) == "torch":
        return torch_swiglu_backward(dh, g, u)
    return _triton_swiglu_backward(dh.contiguous(), g.contiguous(), u.contiguous())


class SwiGLUFunction(torch.autograd.Function):
    """Lean SwiGLU: saves g and u (not silu(g)), recomputes silu in backward."""

    @staticmethod
    def forward(ctx, g, u, kernel="auto"):
        ctx.kernel = kernel
        ctx.save_for_backward(g, u)
        return swiglu_forward(g, u, kernel)

    @staticmethod
    def backward(ctx, dh):
        g, u = ctx.saved_tensors
        dg, du = swiglu_backward(dh, g, u, ctx.kernel)
        return dg, du, None


def _check(**tensors) -> None:
    ref_name, ref = next(iter(tensors.items()))
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point tensor, got {type(t).__name__}")
        if t.shape != ref.shape or t.dtype != ref.dtype or t.device != ref.device:
            raise ValueError(
                f"{name}: {t.dtype} {tuple(t.shape)} on {t.device} does not match "
                f"{ref_name}: {ref.dtype} {tuple(ref.shape)} on {ref.device}; they must agree"
            )
