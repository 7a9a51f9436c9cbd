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
from .projection import dot_tile, tile_settings

try:  # optional dependency: the PyTorch references below work without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = tl = None

__all__ = ["swiglu_forward", "swiglu_backward", "swiglu_project_forward"]

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


def _swiglu_project_kernel(
    g_ptr, u_ptr, qg_ptr, qu_ptr, h_ptr, zg_ptr, zu_ptr,
    N, n, rg, ru, stride_x, stride_h, stride_qg, stride_qu, stride_zg, stride_zu,
    DOT_IN_INPUT_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # SwiGLU with the PRAC projections of both inputs fused in: program (m, j) computes the Zg and
    # Zu tiles [rows m, columns j] while g and u stream through once; the j = 0 programs then write
    # h = silu(g)·u for their rows from the (cache-hot) inputs.
    pid_m = tl.program_id(0)
    pid_r = tl.program_id(1)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < N
    acc_g = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    g_rows = g_ptr + rows[:, None] * stride_x
    u_rows = u_ptr + rows[:, None] * stride_x
    for k0 in range(0, n, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < n
        acc_g, _ = dot_tile(g_rows, 1, qg_ptr, stride_qg, 1, ks, k_mask, row_mask, cols, cols < rg, acc_g,
                            DOT_IN_INPUT_DTYPE)
        acc_u, _ = dot_tile(u_rows, 1, qu_ptr, stride_qu, 1, ks, k_mask, row_mask, cols, cols < ru, acc_u,
                            DOT_IN_INPUT_DTYPE)
    tl.store(zg_ptr + rows[:, None] * stride_zg + cols[None, :], acc_g.to(zg_ptr.dtype.element_ty),
             mask=row_mask[:, None] & (cols < rg)[None, :])
    tl.store(zu_ptr + rows[:, None] * stride_zu + cols[None, :], acc_u.to(zu_ptr.dtype.element_ty),
             mask=row_mask[:, None] & (cols < ru)[None, :])
    if pid_r == 0:
        for k0 in range(0, n, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            mask = row_mask[:, None] & (ks < n)[None, :]
            g = tl.load(g_ptr + rows[:, None] * stride_x + ks[None, :], mask=mask, other=0.0).to(tl.float32)
            u = tl.load(u_ptr + rows[:, None] * stride_x + ks[None, :], mask=mask, other=0.0).to(tl.float32)
            h = g * tl.sigmoid(g) * u
            tl.store(h_ptr + rows[:, None] * stride_h + ks[None, :], h.to(h_ptr.dtype.element_ty), mask=mask)


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


def _triton_swiglu_project(g2d, u2d, qg, qu):
    N, n = g2d.shape
    qg, qu = qg.to(g2d.dtype).contiguous(), qu.to(g2d.dtype).contiguous()  # rounded once, as fused_project
    rg, ru = qg.shape[1], qu.shape[1]
    h = torch.empty_like(g2d)
    zg = torch.empty((N, rg), dtype=g2d.dtype, device=g2d.device)
    zu = torch.empty((N, ru), dtype=g2d.dtype, device=g2d.device)
    if N:
        tiles = tile_settings(g2d.dtype, accumulators=2)
        # At least one column tile, so the j = 0 programs that write h exist.
        grid = (triton.cdiv(N, tiles["BLOCK_M"]), max(1, triton.cdiv(max(rg, ru), tiles["BLOCK_R"])))
        jitted(_swiglu_project_kernel)[grid](
            g2d, u2d, qg, qu, h, zg, zu, N, n, rg, ru, g2d.stride(0), h.stride(0), qg.stride(0), qu.stride(0),
            zg.stride(0), zu.stride(0), **tiles,
        )
    return h, zg, zu


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


def torch_swiglu_project_forward(g2d, u2d, qg, qu):
    """Reference of the fused forward: the SwiGLU reference plus fused_project's 16-bit reference."""
    from .projection import torch_fused_project

    return torch_swiglu_forward(g2d, u2d), torch_fused_project(g2d, qg, 16)[0], torch_fused_project(u2d, qu, 16)[0]


def swiglu_project_forward(g2d: torch.Tensor, u2d: torch.Tensor, qg: torch.Tensor, qu: torch.Tensor,
                           kernel: str = "auto"):
    """(h, Zg, Zu): h = silu(g)·u and the PRAC projections Zg = g·qg, Zu = u·qu, g and u read once.

    Zg, Zu are what `fused_project(., q, 16)` returns; 8-bit storage quantizes them afterwards.
    This is the SwiGLU with its nonlinear compression fused in.
    """
    _check(g2d=g2d, u2d=u2d)
    if g2d.dim() != 2:
        raise ValueError(f"g2d: expected a 2-D tensor [N, n], got shape {tuple(g2d.shape)}")
    for name, q in (("qg", qg), ("qu", qu)):
        if not isinstance(q, torch.Tensor) or q.dim() != 2 or q.shape[0] != g2d.shape[1]:
            raise ValueError(f"{name}: expected a 2-D tensor with {g2d.shape[1]} rows, got "
                             f"{tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__}")
    if resolve_kernel(kernel, g2d.device) == "torch":
        return torch_swiglu_project_forward(g2d, u2d, qg, qu)
    return _triton_swiglu_project(g2d.contiguous(), u2d.contiguous(), qg.float(), qu.float())


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
