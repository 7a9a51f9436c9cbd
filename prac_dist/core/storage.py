"""How a compressed activation is stored: Z = X·Q, or a tensor itself in int8 with stochastic rounding.

Every path goes through prac_dist.kernels.projection (`fused_project`, `quantize`, `dequantize`):
with kernel='torch' (the CPU path) that is the PyTorch reference the Triton kernels are tested
against, so there is one implementation of the arithmetic.

8-bit: per-row scale s_i = max_j |z_ij| / 127 and q_ij = floor(z_ij / s_i + u_ij), u ~ U[0, 1),
so E[q_ij · s_i] = z_ij: the stored activation stays an unbiased estimate and so does dW.
The compressor passes the key of each rounding (made on the device from a hash of its seed, name and
rank and a call counter kept in its state), so a resumed run rounds exactly as an uninterrupted one, no
seed is read back from a device, and torch.compile traces it. The forward output never depends on the
noise, so an activation-checkpointing recompute that draws other codes changes nothing but which
unbiased estimate backward uses.
"""

from __future__ import annotations

import torch

from prac_dist.kernels.projection import dequantize, fused_project, quantize

__all__ = ["is_compressed_activation"]

COMPRESSED_ATTR = "_prac_compressed"


def mark_compressed(t: torch.Tensor) -> torch.Tensor:
    """Tag a tensor as a PRAC compressed activation (offload hooks move these and nothing else)."""
    setattr(t, COMPRESSED_ATTR, True)
    return t


def is_compressed_activation(t: torch.Tensor) -> bool:
    return bool(getattr(t, COMPRESSED_ATTR, False))


@torch.no_grad()
def pack(x2d: torch.Tensor, q_fwd: torch.Tensor, bits: int, kernel: str = "torch", seed: int = 0) -> tuple:
    """Stored form of x2d's projection Z = x2d·q_fwd (q_fwd float32), kept as `pack_projected` keeps it."""
    return pack_projected(project(x2d, q_fwd, kernel), bits, kernel, seed)


@torch.no_grad()
def project(x2d: torch.Tensor, q_fwd: torch.Tensor, kernel: str = "torch") -> torch.Tensor:
    """Z = x2d·q_fwd in x2d's dtype (q_fwd float32), before it is packed."""
    return fused_project(x2d, q_fwd, 16, kernel=kernel)[0]


@torch.no_grad()
def pack_projected(z: torch.Tensor, bits: int, kernel: str = "torch", seed: int = 0) -> tuple:
    """Stored form of a projected Z: itself at 16 bits, (int8 codes, float32 row scales) at 8."""
    if bits == 16:
        return (mark_compressed(z),)
    return pack_int8(z, kernel, seed)


@torch.no_grad()
def pack_int8(x2d: torch.Tensor, kernel: str = "torch", seed: int = 0) -> tuple:
    """(int8 codes, float32 row scales) of x2d, unbiased: n + 4 bytes per row instead of 2n (bf16)."""
    return tuple(mark_compressed(t) for t in quantize(x2d, seed, kernel))


def unpack(packed: tuple, dtype: torch.dtype, kernel: str = "torch") -> torch.Tensor:
    if len(packed) == 1:
        return packed[0].to(dtype)
    codes, scale = packed
    return dequantize(codes, scale, dtype, kernel=kernel)
