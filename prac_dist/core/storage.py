"""How a compressed activation is stored: Z = X·Q at 16 bits, or int8 with stochastic rounding.

8-bit: per-row scale s_i = max_j |z_ij| / 127 and q_ij = floor(z_ij / s_i + u_ij), u ~ U[0, 1),
so E[q_ij · s_i] = z_ij: the stored activation stays an unbiased estimate and so does dW.
The uniform noise comes from torch's default generator, which activation checkpointing
saves and restores, so a recompute stores the same codes.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["pack", "pack_projected", "unpack", "mark_compressed", "is_compressed_activation"]

COMPRESSED_ATTR = "_prac_compressed"


def mark_compressed(t: torch.Tensor) -> torch.Tensor:
    """Tag a tensor as a PRAC compressed activation (offload hooks move these and nothing else)."""
    setattr(t, COMPRESSED_ATTR, True)
    return t


def is_compressed_activation(t: torch.Tensor) -> bool:
    return bool(getattr(t, COMPRESSED_ATTR, False))


def _use_triton(kernel: str, device: torch.device) -> bool:
    if kernel == "torch":
        return False
    try:
        from prac_dist.kernels import resolve_kernel
    except ImportError:
        if kernel == "triton":
            raise
        return False
    return resolve_kernel(kernel, device) == "triton"


@torch.no_grad()
def pack(x2d: torch.Tensor, q_fwd: torch.Tensor, bits: int, kernel: str = "torch") -> tuple:
    """Stored form of x2d: its projection Z = x2d·q_fwd, kept as `pack_projected` keeps it."""
    if _use_triton(kernel, x2d.device):
        from prac_dist.kernels import fused_project

        z, _ = fused_project(x2d, q_fwd.float(), 16, kernel=kernel)
    else:
        z = x2d @ q_fwd
    return pack_projected(z, bits, kernel)


@torch.no_grad()
def pack_projected(z: torch.Tensor, bits: int, kernel: str = "torch") -> tuple:
    """Stored form of a projected Z: itself at 16 bits, (int8 codes, float32 row scales) at 8."""
    if bits == 16:
        return (mark_compressed(z),)
    if _use_triton(kernel, z.device):
        from prac_dist.kernels import quantize

        # The seed comes from torch's default generator, which activation checkpointing restores.
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        return tuple(mark_compressed(t) for t in quantize(z, seed, kernel))
    return tuple(mark_compressed(t) for t in quantize_int8_sr(z))


def quantize_int8_sr(z: torch.Tensor, generator: Optional[torch.Generator] = None):
    zf = z.float()
    scale = zf.abs().amax(dim=-1) / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    noise = torch.rand(zf.shape, device=zf.device, generator=generator)
    codes = torch.floor(zf / safe[:, None] + noise).clamp_(-127, 127).to(torch.int8)
    return codes, scale


def unpack(packed: tuple, dtype: torch.dtype, kernel: str = "torch") -> torch.Tensor:
    if len(packed) == 1:
        return packed[0].to(dtype)
    codes, scale = packed
    if _use_triton(kernel, codes.device):
        from prac_dist.kernels import dequantize

        return dequantize(codes, scale, dtype, kernel=kernel)
    return (codes.float() * scale[:, None]).to(dtype)
