"""Fast principal-subspace refresh: subspace iteration warm-started from the previous Q1.

The exact refresh takes the top-r eigenvectors of G = XᵀX (n x n): a dense eigh costs
about 9n³ flops of mostly non-GEMM work (tridiagonalisation is memory-bound, and
cuSOLVER's syevd for n = 2048 is a long sequential kernel chain). Here:

    Ω  = [Q1_prev | Gaussian]  (n x k, k = r + oversample)    or Gaussian cold
    Q  = orth(G Ω), repeated `iters` times                    (GEMMs + thin QR)
    Q1 = Q V[:, :r],  V = top eigenvectors of QᵀGQ (k x k)    (Rayleigh-Ritz)

Every step is a matmul or a thin QR, so it runs near GEMM speed on any device.
Activation spectra decay fast and Q1 drifts slowly between refreshes (T1 = 500
optimizer steps), so a warm start needs few iterations; the captured energy is
checked against the exact eigenvectors in tests/kernels and
benchmarks/subspace_refresh.py. Matmul-bound, so PyTorch only: no Triton kernel.
"""

from __future__ import annotations

from typing import Optional

import torch

from .projection import gaussian_noise, rounding_key_of

__all__ = ["randomized_principal_basis", "captured_energy"]


@torch.no_grad()
def randomized_principal_basis(
    x2d: torch.Tensor,
    r: int,
    q_prev: Optional[torch.Tensor] = None,
    iters: int = 2,
    oversample: int = 8,
    seed: int = 0,
) -> torch.Tensor:
    """Approximate top-r right singular vectors of x2d [N, n] as a float32 [n, r] orthonormal basis.

    q_prev: the previous Q1 [n, r'] (any r'); its columns seed the iteration.
    iters: power iterations (each one G-apply and one thin QR).
    oversample: extra columns beyond r; they absorb the directions near the cut.
    seed: seeds the Gaussian columns (a private CPU generator, so CPU and GPU runs draw
    the same matrix and the caller's RNG stream is untouched).
    """
    _check(x2d, r, q_prev, iters, oversample)
    x = x2d.float()
    N, n = x.shape
    if r == 0:
        return x.new_zeros(n, 0)
    k = min(n, r + oversample)
    apply_g = _gram_operator(x, k, iters)
    if k == n:
        # Nothing to gain from a subspace as wide as the space: exact answer, same cost order.
        return _rayleigh_ritz(apply_g, torch.eye(n, device=x.device), r)
    q = _orth(apply_g(_start(n, k, q_prev, seed, x.device)))
    for _ in range(iters - 1):
        q = _orth(apply_g(q))
    return _rayleigh_ritz(apply_g, q, r)


@torch.no_grad()
def exact_principal_basis(x2d: torch.Tensor, r: int) -> torch.Tensor:
    """Top-r eigenvectors of XᵀX in float32 (the reference the randomized refresh is held to)."""
    x = x2d.float()
    _, evecs = torch.linalg.eigh(x.t() @ x)
    return evecs[:, x.shape[1] - r:].flip(-1).contiguous()


@torch.no_grad()
def captured_energy(x2d: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """‖X Q‖²_F / ‖X‖²_F for an orthonormal Q [n, r] (1.0 for an all-zero X), a 0-dim float32 tensor.

    It stays on X's device: the training loop reads it only when someone asks (no host sync).
    """
    x = x2d.float()
    total = x.pow(2).sum()
    captured = (x @ q.float()).pow(2).sum()
    return torch.where(total > 0, captured / torch.where(total > 0, total, 1.0), torch.ones_like(total))


def _gram_operator(x: torch.Tensor, k: int, iters: int):
    """v -> XᵀX v, through the n x n Gram when that is fewer flops than two N-sized matmuls."""
    N, n = x.shape
    applies = iters + 1  # iters power steps + the Rayleigh-Ritz projection
    if N * n * n + applies * n * n * k < applies * 2 * N * n * k:
        gram = x.t() @ x  # N=4096, n=768, k=238: 2.4 GFLOP once vs 4.5 GFLOP of X-sized applies
        return lambda v: gram @ v
    return lambda v: x.t() @ (x @ v)


def _start(n: int, k: int, q_prev: Optional[torch.Tensor], seed: int, device) -> torch.Tensor:
    # Counter-based normals drawn on the device (prac_dist.kernels.projection): torch.compile traces them.
    omega = gaussian_noise(rounding_key_of(seed, device), n, k)
    if q_prev is not None:
        keep = min(k, q_prev.shape[1])
        omega[:, :keep] = q_prev[:, :keep].to(device=device, dtype=torch.float32)
    return omega


def _orth(y: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(y).Q


def _rayleigh_ritz(apply_g, q: torch.Tensor, r: int) -> torch.Tensor:
    t = q.t() @ apply_g(q)
    # Symmetrise: T is symmetric in exact arithmetic, float32 GEMMs leave ~1e-7 asymmetry.
    _, v = torch.linalg.eigh(0.5 * (t + t.t()))
    return (q @ v[:, v.shape[1] - r:].flip(-1)).contiguous()


def _check(x2d, r, q_prev, iters, oversample) -> None:
    if not isinstance(x2d, torch.Tensor) or x2d.dim() != 2 or not x2d.is_floating_point():
        raise ValueError(f"x2d: expected a 2-D floating-point tensor [N, n], got {type(x2d).__name__}")
    n = x2d.shape[1]
    if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= n:
        raise ValueError(f"r={r!r}: accepted is an integer in [0, n={n}]")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters={iters!r}: accepted is an integer >= 1")
    if isinstance(oversample, bool) or not isinstance(oversample, int) or oversample < 0:
        raise ValueError(f"oversample={oversample!r}: accepted is an integer >= 0")
    if q_prev is not None and (not isinstance(q_prev, torch.Tensor) or q_prev.dim() != 2 or q_prev.shape[0] != n):
        shape = tuple(q_prev.shape) if isinstance(q_prev, torch.Tensor) else type(q_prev).__name__
        raise ValueError(f"q_prev: expected None or a tensor [n={n}, r'], got {shape}")
