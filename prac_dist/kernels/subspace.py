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
checked against the exact refresh production runs (`principal_basis`, here too) in tests/kernels
and benchmarks/quality/subspace_refresh.py. Matmul-bound, so PyTorch only: no Triton kernel.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .projection import gaussian_noise, rounding_key_of

__all__ = ["randomized_principal_basis", "principal_basis", "captured_energy", "spectrum", "finite_scaled",
           "top_basis", "energy_share"]


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
def finite_scaled(x2d: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(X / max|X| in float32 with non-finite entries zeroed, whether X was all finite): device tensors.

    Bases and energy shares do not depend on X's scale; the scaling keeps the Gram's entries <= N
    (activations of 1e38 square to inf in float32) and the zeroing keeps eigh from failing to converge.
    """
    x = x2d.float()
    ok = torch.isfinite(x).all()
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    amax = x.abs().amax()
    return x / torch.where(amax > 0, amax, torch.ones_like(amax)), ok


@torch.no_grad()
def spectrum(x2d: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending, >= 0) and eigenvectors of XᵀX in float32, X as `finite_scaled` gives it."""
    x, _ = finite_scaled(x2d)
    gram = x.t() @ x  # n x n: N·n² flops, far cheaper than an SVD of the N x n matrix
    # (On CUDA torch checks eigh's convergence flag on the host: the one sync left, on refresh steps only.)
    evals, evecs = torch.linalg.eigh(gram)
    return evals.flip(0).clamp_min(0), evecs.flip(-1)


@torch.no_grad()
def principal_basis(x2d: torch.Tensor, r: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The exact refresh: top-r right singular vectors of x2d as a float32 [n, r] orthonormal basis, and the
    share of ‖X‖²_F they capture (0-dim tensor). The reference the randomized refresh is held to."""
    evals, evecs = spectrum(x2d)
    return top_basis(evals, evecs, r)


def top_basis(evals: torch.Tensor, evecs: torch.Tensor, r: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(Q1, captured share) from a `spectrum`: its top-r eigenvectors, re-orthonormalised."""
    if r == 0:
        return evecs.new_zeros(evecs.shape[0], 0), evals.new_zeros(())
    # float32 eigh leaves its eigenvectors orthogonal only to ~1e-5; one QR (cheap, n x r) brings
    # [Q1 | Q2] back to ~1e-7, which is what makes full rank reproduce the exact gradient.
    top, _ = torch.linalg.qr(evecs[:, :r])
    return top, energy_share(evals[:r].sum(), evals.sum())


@torch.no_grad()
def captured_energy(x2d: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """‖X Q‖²_F / ‖X‖²_F for an orthonormal Q [n, r] (1.0 for an all-zero X), a 0-dim float32 tensor.

    It stays on X's device: the training loop reads it only when someone asks (no host sync).
    """
    x = x2d.float()
    return energy_share((x @ q.float()).pow(2).sum(), x.pow(2).sum())


def energy_share(captured: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """captured / total, 1.0 where total is 0 (an all-zero X loses nothing), without a host read."""
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
