"""Lean RMSNorm: forward saves (x, rstd) only, backward takes a possibly reconstructed x.

    rstd = rsqrt(mean(x.float()^2) + eps)           float32 [N], kept exact
    y    = weight * (x.float() * rstd).to(x.dtype)  HF LlamaRMSNorm's op order
    dx   = rstd * (g - x̂ · mean(g · x̂)),  x̂ = x·rstd, g = dy·weight     (float32)
    dw   = Σ_rows dy · x̂.to(x.dtype)                accumulated in float32

HF's module saves float32 up-casts of x (2.5 units of d x 2 bytes per token); this
saves x in its own dtype plus 4 bytes of rstd per token. When the core compresses
the norm input (compress_nonlinear), it passes the decompressed x̃ to the backward;
rstd still comes from the true x, so the statistics stay exact.
"""

from __future__ import annotations

from typing import Tuple

import torch

from .dispatch import jitted, resolve_kernel
from .projection import dot_tile, tile_settings

try:  # optional dependency: the PyTorch references below work without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = tl = None

__all__ = ["rmsnorm_forward", "rmsnorm_backward", "rmsnorm_project_forward"]

_MAX_WIDTH = 65536  # one row per program in registers: 64K float32 lanes is Triton's block limit


# ----------------------------------------------------------------------------- Triton kernels
def _rmsnorm_forward_kernel(
    x_ptr, w_ptr, y_ptr, rstd_ptr,
    N, n, stride_x, stride_y, eps,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    row_mask = rows < N
    mask = row_mask[:, None] & (cols < n)[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    # Correctly rounded sqrt and division: the same rstd torch computes, up to summation order.
    rstd = 1.0 / tl.sqrt_rn(tl.sum(x * x, axis=1) / n + eps)
    tl.store(rstd_ptr + rows, rstd, mask=row_mask)
    x_norm = (x * rstd[:, None]).to(x_ptr.dtype.element_ty)  # HF rounds here, before the weight
    w = tl.load(w_ptr + cols, mask=cols < n, other=0.0).to(tl.float32)
    y = w[None, :] * x_norm.to(tl.float32)
    tl.store(y_ptr + rows[:, None] * stride_y + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


def _rmsnorm_backward_kernel(
    dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_partial_ptr,
    N, n, stride_dy, stride_x, stride_dx, rows_per_program,
    BLOCK: tl.constexpr,
):
    # Each program owns a contiguous slab of rows and keeps its dw partial sum in
    # registers (float32); the host adds the [programs, n] partials. No atomics, so
    # dw is deterministic run to run.
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK,), dtype=tl.float32)
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, N)
    for row in range(row_start, row_end):
        dy = tl.load(dy_ptr + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
        rstd = tl.load(rstd_ptr + row)
        x_hat = x.to(tl.float32) * rstd
        g = dy * w
        dx = rstd * (g - x_hat * (tl.sum(g * x_hat, axis=0) / n))
        tl.store(dx_ptr + row * stride_dx + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw_acc += dy * x_hat.to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(dw_partial_ptr + pid.to(tl.int64) * n + cols, dw_acc, mask=mask)


def _rmsnorm_project_kernel(
    x_ptr, w_ptr, q_ptr, y_ptr, rstd_ptr, z_ptr,
    N, n, r, stride_x, stride_y, stride_qk, stride_z, eps,
    DOT_IN_INPUT_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # RMSNorm with the PRAC projection of its input fused in: program (m, j) computes the Z tile
    # [rows m, columns j] = X·[Q1 | c·Q2] and, while X streams through, its rows' sums of squares;
    # the j = 0 programs then finish the norm (rstd, y) from the X rows they just read (cache-hot).
    pid_m = tl.program_id(0)
    pid_r = tl.program_id(1)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < N
    col_mask = cols < r
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    sumsq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    x_rows = x_ptr + rows[:, None] * stride_x
    for k0 in range(0, n, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        acc, x = dot_tile(x_rows, 1, q_ptr, stride_qk, 1, ks, ks < n, row_mask, cols, col_mask, acc,
                          DOT_IN_INPUT_DTYPE)
        xf = x.to(tl.float32)
        sumsq += tl.sum(xf * xf, axis=1)
    tl.store(z_ptr + rows[:, None] * stride_z + cols[None, :], acc.to(z_ptr.dtype.element_ty),
             mask=row_mask[:, None] & col_mask[None, :])
    if pid_r == 0:
        rstd = 1.0 / tl.sqrt_rn(sumsq / n + eps)
        tl.store(rstd_ptr + rows, rstd, mask=row_mask)
        for k0 in range(0, n, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            mask = row_mask[:, None] & (ks < n)[None, :]
            x = tl.load(x_ptr + rows[:, None] * stride_x + ks[None, :], mask=mask, other=0.0)
            x_norm = (x.to(tl.float32) * rstd[:, None]).to(x_ptr.dtype.element_ty)  # HF's rounding point
            w = tl.load(w_ptr + ks, mask=ks < n, other=0.0).to(tl.float32)
            y = w[None, :] * x_norm.to(tl.float32)
            tl.store(y_ptr + rows[:, None] * stride_y + ks[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- host launchers
def _triton_rmsnorm_forward(x2d, weight, eps):
    N, n = x2d.shape
    _check_width(n)
    y = torch.empty((N, n), dtype=torch.promote_types(weight.dtype, x2d.dtype), device=x2d.device)
    rstd = torch.empty((N,), dtype=torch.float32, device=x2d.device)
    if N:
        # Tiles of <= 4096 elements: several short rows per program, one long row alone.
        block_n = triton.next_power_of_2(n)
        block_m = max(1, min(triton.next_power_of_2(N), 4096 // block_n))
        jitted(_rmsnorm_forward_kernel)[(triton.cdiv(N, block_m),)](
            x2d, weight, y, rstd, N, n, x2d.stride(0), y.stride(0), eps, BLOCK_M=block_m, BLOCK_N=block_n
        )
    return y, rstd


def _triton_rmsnorm_project(x2d, weight, eps, q_fwd):
    N, n = x2d.shape
    r = q_fwd.shape[1]
    q_fwd = q_fwd.to(x2d.dtype).contiguous()  # rounded once on the host, as fused_project does
    y = torch.empty((N, n), dtype=torch.promote_types(weight.dtype, x2d.dtype), device=x2d.device)
    rstd = torch.empty((N,), dtype=torch.float32, device=x2d.device)
    z = torch.empty((N, r), dtype=x2d.dtype, device=x2d.device)
    if N:
        tiles = tile_settings(x2d.dtype)
        # At least one column tile, so the j = 0 programs that finish the norm exist.
        grid = (triton.cdiv(N, tiles["BLOCK_M"]), max(1, triton.cdiv(r, tiles["BLOCK_R"])))
        jitted(_rmsnorm_project_kernel)[grid](
            x2d, weight, q_fwd, y, rstd, z, N, n, r, x2d.stride(0), y.stride(0), q_fwd.stride(0), z.stride(0),
            eps, **tiles,
        )
    return y, rstd, z


def _backward_programs(device: torch.device, N: int) -> int:
    # One slab per SM on GPU (132 on H100): enough parallelism, and the dw partials
    # buffer stays programs x n float32 (132 x 8192 x 4 = 4.3 MB at most for LLaMA-8B).
    if device.type == "cuda":
        return max(1, min(N, torch.cuda.get_device_properties(device).multi_processor_count))
    return max(1, min(N, 4))  # interpreter: few launches keep the CPU tests fast


def _triton_rmsnorm_backward(dy, x2d, weight, rstd):
    N, n = x2d.shape
    _check_width(n)
    dx = torch.empty_like(x2d)
    programs = _backward_programs(x2d.device, N)
    dw_partial = torch.zeros((programs, n), dtype=torch.float32, device=x2d.device)
    if N:
        rows_per_program = triton.cdiv(N, programs)
        block = triton.next_power_of_2(n)
        # One row per program in registers: at 1024 lanes, 4 warps spill 8 B on sm_90 with triton 3.6
        # (fp16, n = 768); 8 warps spill nothing from 1024 to 8192 lanes (python -m tools.aot).
        jitted(_rmsnorm_backward_kernel)[(programs,)](
            dy, x2d, weight, rstd, dx, dw_partial, N, n, dy.stride(0), x2d.stride(0), dx.stride(0),
            rows_per_program, BLOCK=block, num_warps=8 if block >= 1024 else 4,
        )
    return dx, dw_partial.sum(0).to(weight.dtype)


# ----------------------------------------------------------------------------- PyTorch references
def torch_rmsnorm_forward(x2d: torch.Tensor, weight: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference forward: HF LlamaRMSNorm's output plus the float32 rstd [N]."""
    xf = x2d.float()
    rstd = torch.rsqrt(xf.pow(2).mean(-1) + eps)
    return weight * (xf * rstd[:, None]).to(x2d.dtype), rstd


def torch_rmsnorm_backward(dy, x2d, weight, rstd) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference backward: (dx in x's dtype, dweight accumulated in float32, in weight's dtype)."""
    x_hat = x2d.float() * rstd[:, None]
    dyf = dy.float()
    g = dyf * weight.float()
    dx = rstd[:, None] * (g - x_hat * (g * x_hat).mean(-1, keepdim=True))
    dw = (dyf * x_hat.to(x2d.dtype).float()).sum(0)
    return dx.to(x2d.dtype), dw.to(weight.dtype)


# ----------------------------------------------------------------------------- public entry points
def rmsnorm_forward(x2d: torch.Tensor, weight: torch.Tensor, eps: float, kernel: str = "auto"):
    """(y, rstd) of RMSNorm over the last dim of x2d [N, n]; see the module docstring."""
    _check(x2d, "x2d")
    if not isinstance(weight, torch.Tensor) or weight.shape != (x2d.shape[1],):
        raise ValueError(f"weight: expected shape ({x2d.shape[1]},), got {_shape(weight)}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0:
        raise ValueError(f"eps={eps!r}: accepted is a number >= 0")
    if resolve_kernel(kernel, x2d.device) == "torch":
        return torch_rmsnorm_forward(x2d, weight, eps)
    return _triton_rmsnorm_forward(x2d.contiguous(), weight.contiguous(), float(eps))


def rmsnorm_backward(dy, x2d, weight, rstd, kernel: str = "auto"):
    """(dx, dweight) given the saved (possibly reconstructed) x2d and the exact rstd."""
    _check(x2d, "x2d")
    if not isinstance(dy, torch.Tensor) or dy.shape != x2d.shape:
        raise ValueError(f"dy: expected shape {tuple(x2d.shape)}, got {_shape(dy)}")
    if not isinstance(weight, torch.Tensor) or weight.shape != (x2d.shape[1],):
        raise ValueError(f"weight: expected shape ({x2d.shape[1]},), got {_shape(weight)}")
    if not isinstance(rstd, torch.Tensor) or rstd.shape != (x2d.shape[0],) or rstd.dtype != torch.float32:
        raise ValueError(f"rstd: expected float32 of shape ({x2d.shape[0]},), got {_shape(rstd)}")
    if resolve_kernel(kernel, x2d.device) == "torch":
        return torch_rmsnorm_backward(dy, x2d, weight, rstd)
    return _triton_rmsnorm_backward(dy.contiguous(), x2d.contiguous(), weight.contiguous(), rstd.contiguous())


def torch_rmsnorm_project_forward(x2d, weight, eps, q_fwd):
    """Reference of the fused forward: the RMSNorm reference plus fused_project's 16-bit reference."""
    from .projection import torch_fused_project

    y, rstd = torch_rmsnorm_forward(x2d, weight, eps)
    return y, rstd, torch_fused_project(x2d, q_fwd, 16)[0]


def rmsnorm_project_forward(x2d: torch.Tensor, weight: torch.Tensor, eps: float, q_fwd: torch.Tensor,
                            kernel: str = "auto"):
    """(y, rstd, Z): RMSNorm of x2d and the PRAC projection Z = x2d·q_fwd of its input, X read once.

    Z is what `fused_project(x2d, q_fwd, 16)` returns (float32 accumulation, x2d's dtype); 8-bit
    storage quantizes it afterwards. This is the norm with its nonlinear compression fused in.
    """
    _check(x2d, "x2d")
    if not isinstance(weight, torch.Tensor) or weight.shape != (x2d.shape[1],):
        raise ValueError(f"weight: expected shape ({x2d.shape[1]},), got {_shape(weight)}")
    if not isinstance(q_fwd, torch.Tensor) or q_fwd.dim() != 2 or q_fwd.shape[0] != x2d.shape[1]:
        raise ValueError(f"q_fwd: expected a 2-D tensor with {x2d.shape[1]} rows, got {_shape(q_fwd)}")
    if resolve_kernel(kernel, x2d.device) == "torch":
        return torch_rmsnorm_project_forward(x2d, weight, eps, q_fwd)
    _check_width(x2d.shape[1])
    return _triton_rmsnorm_project(x2d.contiguous(), weight.contiguous(), float(eps), q_fwd.float())


def _check(x2d, name: str) -> None:
    if not isinstance(x2d, torch.Tensor) or x2d.dim() != 2 or not x2d.is_floating_point():
        raise ValueError(f"{name}: expected a 2-D floating-point tensor [N, n], got {_shape(x2d)}")


def _check_width(n: int) -> None:
    if n > _MAX_WIDTH:
        raise ValueError(f"x2d: width n={n} exceeds {_MAX_WIDTH}, the Triton kernel's one-row block; use kernel='torch'")


def _shape(t) -> str:
    return f"{t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
