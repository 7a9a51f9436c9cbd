"""Fused PRAC projection Z = X·[Q1 | c·Q2], optionally stored in 8 bits, unbiasedly.

One matmul kernel reads X once against the concatenated basis (the caller folds
c = (n - r1) / r2 into the Q2 columns), so principal and random parts cost one
pass, not two. With `storage_bits=8` a second, row-wise kernel turns Z into
int8 with a per-row absmax scale and stochastic rounding:

    s_i = max_j |z_ij| / 127,    q_ij = floor(z_ij / s_i + u_ij),  u ~ U[0, 1)

written as floor + Bernoulli(frac) so that E[q_ij] * s_i = z_ij, i.e. the
stored activation stays an unbiased estimate of what 16-bit storage keeps, and
E[dW] is unchanged. The 8-bit path quantizes exactly the values 16-bit storage
would have stored (z in X's dtype), so `scale` is a deterministic function of
the 16-bit output and the two storage modes agree in expectation bit for bit.

Stored bytes per token: r * 2 (bf16) -> r + 4 (int8 + one float32 scale),
i.e. 0.51x at r = 460 (0.3n + 0.3n of n = 768).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch

from .dispatch import device_function, interpreting, jitted, resolve_kernel

try:  # optional dependency: the PyTorch references below work without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = tl = None

__all__ = ["fused_project", "quantize", "dequantize", "rounding_key", "gaussian_noise"]

_QMAX = 127.0  # symmetric int8 range [-127, 127]; -128 unused so the grid is symmetric
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MAX_TILE = 4096  # elements per row-wise tile: 16 KiB of float32 registers per program
# A rounding's randomness: None (drawn from torch's generator), an int in [0, 2^63), or a key tensor
# (int64 [2], two 32-bit words on the data's device, as `rounding_key` makes it).
Seed = Union[None, int, torch.Tensor]


# ----------------------------------------------------------------------------- Triton kernels
@device_function
def dot_tile(x_ptrs, stride_xk, q_ptr, stride_qk, stride_qr, ks, k_mask, row_mask, cols, col_mask, acc,
             DOT_IN_INPUT_DTYPE: tl.constexpr):
    """One K step of a Z = X·Q tile, shared by the projection, RMSNorm and SwiGLU kernels: loads the X tile
    (rows at `x_ptrs`, columns `ks`) and the Q tile, returns (acc + X·Q, the X tile)."""
    x = tl.load(x_ptrs + ks[None, :] * stride_xk, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
    q = tl.load(q_ptr + ks[:, None] * stride_qk + cols[None, :] * stride_qr,
                mask=k_mask[:, None] & col_mask[None, :], other=0.0)
    # Q arrives already rounded to X's dtype; bf16 x bf16 products are exact in float32
    # and the accumulation is float32, so both branches compute the same function.
    if DOT_IN_INPUT_DTYPE:
        acc = tl.dot(x, q, acc)  # bf16/fp16 tensor cores (GPU)
    else:
        acc = tl.dot(x.to(tl.float32), q.to(tl.float32), acc, input_precision="ieee")
    return acc, x


def _project_kernel(
    x_ptr, q_ptr, z_ptr,
    N, n, r,
    stride_xm, stride_xk, stride_qk, stride_qr, stride_zm, stride_zr,
    DOT_IN_INPUT_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_r = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < N
    col_mask = cols < r
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xm
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, n, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        acc, _ = dot_tile(x_rows, stride_xk, q_ptr, stride_qk, stride_qr, ks, ks < n, row_mask, cols, col_mask,
                          acc, DOT_IN_INPUT_DTYPE)
    z_ptrs = z_ptr + rows.to(tl.int64)[:, None] * stride_zm + cols[None, :] * stride_zr
    tl.store(z_ptrs, acc.to(z_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def _quantize_rows_kernel(
    z_ptr, out_ptr, scale_ptr,
    N, r, stride_z, stride_out, key_ptr,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    rows64 = rows.to(tl.int64)
    # The rounding key: two 32-bit words read from the device (a traced counter makes it, no host value).
    k0 = tl.load(key_ptr).to(tl.uint32)
    k1 = tl.load(key_ptr + 1).to(tl.uint32)
    m1 = tl.full((), 0x7FEB352D, tl.uint32)
    m2 = tl.full((), 0x846CA68B, tl.uint32)
    # Pass 1: row absmax over column chunks (Z is re-read from cache in pass 2).
    amax = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for c0 in range(0, r, BLOCK_R):
        cols = c0 + tl.arange(0, BLOCK_R)
        mask = row_mask[:, None] & (cols < r)[None, :]
        z = tl.load(z_ptr + rows64[:, None] * stride_z + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(z))
    # IEEE division so the scale is bit-identical to torch's amax / 127.
    scale = tl.math.div_rn(tl.max(amax, axis=1), 127.0)
    tl.store(scale_ptr + rows64, scale, mask=row_mask)
    # scale == 0 only for an all-zero row, whose z / 1 = 0: no 0/0 anywhere.
    divisor = tl.where(scale > 0.0, scale, 1.0)[:, None]
    # Pass 2: stochastic rounding, floor(v) + Bernoulli(v - floor(v)).
    for c0 in range(0, r, BLOCK_R):
        cols = c0 + tl.arange(0, BLOCK_R)
        mask = row_mask[:, None] & (cols < r)[None, :]
        z = tl.load(z_ptr + rows64[:, None] * stride_z + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        # |z| / (amax / 127) can exceed 127 by an ulp: the clamp keeps int8 from wrapping.
        v = tl.minimum(tl.maximum(z / divisor, -127.0), 127.0)
        lo = tl.floor(v)
        frac = v - lo  # exact in float32
        # Counter-based noise, the same function as rounding_noise: u = lowbias32²(element index, key) / 2^24.
        # Global element indices: the bits do not depend on block sizes.
        idx = rows64[:, None] * r + cols[None, :]
        h = (idx & 0xFFFFFFFF).to(tl.uint32) ^ k0
        salt = (idx >> 32).to(tl.uint32) ^ k1
        for rnd in tl.static_range(2):
            h ^= h >> 16
            h *= m1
            h ^= h >> 15
            h *= m2
            h ^= h >> 16
            if rnd == 0:
                h ^= salt
        u = (h >> 8).to(tl.float32) * (1.0 / 16777216.0)
        q = lo + tl.where(u < frac, 1.0, 0.0)
        tl.store(out_ptr + rows64[:, None] * stride_out + cols[None, :], q.to(tl.int8), mask=mask)


def _dequantize_rows_kernel(
    q_ptr, scale_ptr, out_ptr,
    N, r, stride_q, stride_out,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    rows64 = rows.to(tl.int64)
    scale = tl.load(scale_ptr + rows64, mask=row_mask, other=0.0)[:, None]
    for c0 in range(0, r, BLOCK_R):
        cols = c0 + tl.arange(0, BLOCK_R)
        mask = row_mask[:, None] & (cols < r)[None, :]
        q = tl.load(q_ptr + rows64[:, None] * stride_q + cols[None, :], mask=mask, other=0).to(tl.float32)
        out = (q * scale).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + rows64[:, None] * stride_out + cols[None, :], out, mask=mask)


# ----------------------------------------------------------------------------- host launchers
def _row_blocks(N: int, r: int) -> Tuple[int, int]:
    # Tiles of <= _MAX_TILE elements: a short row (r = 33) gets 64 rows per program
    # instead of wasting 31 of 64 lanes; a row longer than the tile loops over chunks.
    block_r = min(triton.next_power_of_2(max(r, 1)), _MAX_TILE)
    block_m = max(1, min(triton.next_power_of_2(max(N, 1)), _MAX_TILE // block_r))
    return block_m, block_r


def _triton_project(x2d: torch.Tensor, q_fwd: torch.Tensor) -> torch.Tensor:
    N, n = x2d.shape
    r = q_fwd.shape[1]
    # Round Q to X's dtype once on the host (n x r, tiny), as torch does: the kernel then
    # reads half the bytes of Q and no in-kernel conversion can round differently.
    q_fwd = q_fwd.to(x2d.dtype).contiguous()
    z = torch.empty((N, r), dtype=x2d.dtype, device=x2d.device)
    if N == 0 or r == 0:
        return z
    if n == 0:
        return z.zero_()
    tiles = tile_settings(x2d.dtype)
    grid = (triton.cdiv(N, tiles["BLOCK_M"]), triton.cdiv(r, tiles["BLOCK_R"]))
    jitted(_project_kernel)[grid](
        x2d, q_fwd, z, N, n, r,
        x2d.stride(0), x2d.stride(1), q_fwd.stride(0), q_fwd.stride(1), z.stride(0), z.stride(1), **tiles,
    )
    return z


def tile_settings(dtype: torch.dtype, accumulators: int = 1) -> dict:
    """Launch settings of the kernels built on `dot_tile` (projection, RMSNorm, SwiGLU).

    64x64x32 tiles: the X and Q tiles plus a 64x64 float32 accumulator per program; tl.dot needs every tile
    side >= 16, masks cover odd N, n, r. At 4 warps a program sits at the 255-register limit where its tiles
    are float32 (sm_80: 8 B of spills at n = 5461; sm_90, triton 3.6: 40 B in the RMSNorm kernel) or where it
    holds two accumulators (SwiGLU's g and u: 64 B at LLaMA-1B in bf16 on sm_90); 8 warps spill nothing.
    Two float32 accumulators also need BLOCK_K 16 (8-208 B of spills at 32). python -m tools.aot checks all.
    """
    wide = dtype == torch.float32
    return dict(
        BLOCK_M=64, BLOCK_R=64, BLOCK_K=16 if wide and accumulators > 1 else 32,
        num_warps=8 if wide or accumulators > 1 else 4,
        # Triton 3.9's interpreter multiplies bf16 tiles as raw uint16 bits (wrong by 1e10), so it gets the
        # float32 branch, which computes the same function.
        DOT_IN_INPUT_DTYPE=not wide and not interpreting(),
    )


def _triton_quantize(z: torch.Tensor, seed: Seed) -> Tuple[torch.Tensor, torch.Tensor]:
    N, r = z.shape
    out = torch.empty((N, r), dtype=torch.int8, device=z.device)
    scale = torch.empty((N,), dtype=torch.float32, device=z.device)
    if N == 0:
        return out, scale
    if r == 0:
        return out, scale.zero_()
    key = rounding_key_of(seed, z.device)
    bm, br = _row_blocks(N, r)
    jitted(_quantize_rows_kernel)[(triton.cdiv(N, bm),)](
        z, out, scale, N, r, z.stride(0), out.stride(0), key, BLOCK_M=bm, BLOCK_R=br
    )
    return out, scale


def _triton_dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    N, r = q.shape
    out = torch.empty((N, r), dtype=dtype, device=q.device)
    if N == 0 or r == 0:
        return out
    bm, br = _row_blocks(N, r)
    jitted(_dequantize_rows_kernel)[(triton.cdiv(N, bm),)](
        q, scale, out, N, r, q.stride(0), out.stride(0), BLOCK_M=bm, BLOCK_R=br
    )
    return out


# ----------------------------------------------------------------------------- PyTorch references
def _torch_project(x2d: torch.Tensor, q_fwd: torch.Tensor) -> torch.Tensor:
    # Q rounded to X's dtype, then exact float32 products summed in float32: what a
    # bf16 tensor-core dot with float32 accumulation computes (and the kernel above).
    q = q_fwd.to(x2d.dtype).float()
    return (x2d.float() @ q).to(x2d.dtype)


def _torch_quantize(z: torch.Tensor, seed: Seed) -> Tuple[torch.Tensor, torch.Tensor]:
    zf = z.float()
    amax = zf.abs().amax(dim=1) if z.shape[1] else zf.new_zeros(z.shape[0])
    scale = amax / _QMAX
    # scale == 0 only for an all-zero row, whose z / 1 = 0: no 0/0 anywhere.
    v = (zf / torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]).clamp(-_QMAX, _QMAX)
    lo = torch.floor(v)
    u = rounding_noise(rounding_key_of(seed, z.device), *z.shape)
    return (lo + (u < v - lo).float()).to(torch.int8), scale


# ----------------------------------------------------------------------------- counter-based rounding noise
# u_ij = lowbias32(lowbias32(i_lo ^ k0) ^ i_hi ^ k1) >> 8, / 2^24, for the global element index i = row·r + col
# and a key (k0, k1) of two 32-bit words: a pure function of device tensors, so eager, aot_eager, inductor and
# the Triton kernel (the same two rounds in uint32) draw the same bits, and torch.compile traces it (no
# torch.Generator, no host seed). lowbias32 is a bijection of 32-bit words (C. Wellons' hash-prospector,
# bias 0.17): within one call no two elements (below 2^32) share a hash. Torch holds the 32-bit words in int64.
_M32 = 0xFFFFFFFF
_LOWBIAS32 = (0x7FEB352D, 0x846CA68B)
_COUNTER_SALT = 0x9E3779B9  # keeps a counter's high word (0 for 2^32 roundings) from cancelling the base


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x · c) mod 2^32 for int64 x in [0, 2^32): c in 16-bit halves keeps every product < 2^49 (no overflow)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 of int64 words in [0, 2^32), elementwise; the Triton kernel computes it in uint32."""
    x = x ^ (x >> 16)
    x = _mul32(x, _LOWBIAS32[0])
    x = x ^ (x >> 15)
    x = _mul32(x, _LOWBIAS32[1])
    return x ^ (x >> 16)


# The two entry points are custom ops: Dynamo traces each as one node (no graph break), aot_eager and
# inductor run this very implementation (bit-exact with eager), and inductor does not generate C++ for the
# ~40 int64 ops of the hash (measured: a compiled _torch_quantize took 94 s to build on this CPU).
@torch.library.custom_op("prac_dist::rounding_key", mutates_args=())
def rounding_key(base: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """Key (int64 [2], words < 2^32) of the `counter`-th rounding of a stream whose base is `base` (int64 [2])."""
    words = torch.stack([counter & _M32, (counter >> 32) ^ _COUNTER_SALT])
    return mix32(base ^ mix32(words))


@rounding_key.register_fake
def _(base: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    return torch.empty(2, dtype=torch.int64, device=base.device)


@torch.library.custom_op("prac_dist::rounding_noise", mutates_args=())
def rounding_noise(key: torch.Tensor, N: int, r: int) -> torch.Tensor:
    """u in [0, 1) (float32 [N, r], multiples of 2^-24) of the key: what the Triton quantize kernel draws."""
    idx = torch.arange(N * r, dtype=torch.int64, device=key.device).view(N, r)
    h = mix32(mix32((idx & _M32) ^ key[0]) ^ (idx >> 32) ^ key[1])
    return (h >> 8).float() * 2.0 ** -24


@rounding_noise.register_fake
def _(key: torch.Tensor, N: int, r: int) -> torch.Tensor:
    return torch.empty((N, r), dtype=torch.float32, device=key.device)


def gaussian_noise(key: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """float32 [rows, cols] of the key, close to iid N(0, 1): Box-Muller on two `rounding_noise` uniforms
    (24-bit: tails cut at sqrt(2 ln 2^24) = 5.8 sigma, a mass of 7e-9). Traceable: random bases drawn on the
    device inside a compiled step, the same numbers in eager (sin/log of inductor may differ by an ulp)."""
    u = rounding_noise(key, 2, rows * cols).view(2, rows, cols)
    radius = torch.sqrt(-2.0 * torch.log1p(-u[0]))  # 1 - u > 0: u < 1
    return radius * torch.cos((2.0 * math.pi) * u[1])


def rounding_key_of(seed: Seed, device) -> torch.Tensor:
    """The key a `seed` argument names: an int64 [2] key tensor as is; an int's two 32-bit words (a host to
    device copy, no sync); None a key drawn from torch's default generator of `device` (torch.manual_seed
    and activation checkpointing's RNG restore reproduce it)."""
    if seed is None:
        return torch.randint(0, 2 ** 32, (2,), dtype=torch.int64, device=device)
    if isinstance(seed, torch.Tensor):
        return seed
    return torch.tensor([seed & _M32, seed >> 32], dtype=torch.int64, device=device)


def torch_fused_project(
    x2d: torch.Tensor, q_fwd: torch.Tensor, storage_bits: int = 16, seed: Seed = None
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """PyTorch reference of `fused_project` (same math, the same rounding noise)."""
    z = _torch_project(x2d, q_fwd)
    if storage_bits == 16:
        return z, None
    return _torch_quantize(z, seed)


def torch_dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """PyTorch reference of `dequantize`: one float32 multiply, one cast."""
    return (q.float() * scale[:, None]).to(dtype)


# ----------------------------------------------------------------------------- public entry points
def fused_project(
    x2d: torch.Tensor,
    q_fwd: torch.Tensor,
    storage_bits: int = 16,
    seed: Seed = None,
    kernel: str = "auto",
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Z = x2d @ q_fwd (float32 accumulation) as stored for the backward pass.

    x2d: [N, n] float32/bfloat16/float16; q_fwd: [n, r] float32 (= [Q1 | c·Q2]).
    storage_bits=16 -> (Z in x2d's dtype, None).
    storage_bits=8  -> (int8 [N, r], float32 per-row scales [N]); E[q * scale] = Z.
    seed: randomness of the stochastic rounding (`Seed`; the kernel and the reference draw the same
    counter-based noise from it); None draws a key from torch's default generator.
    """
    _check_project_args(x2d, q_fwd, storage_bits, seed)
    path = resolve_kernel(kernel, x2d.device)
    if path == "torch":
        return torch_fused_project(x2d, q_fwd, storage_bits, seed)
    x2d, q_fwd = x2d.contiguous(), q_fwd.contiguous()
    z = _triton_project(x2d, q_fwd)
    if storage_bits == 16:
        return z, None
    return _triton_quantize(z, seed)


def quantize(z: torch.Tensor, seed: Seed = None, kernel: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """8-bit storage of an already projected Z (e.g. from rmsnorm_project_forward): (int8, scales)."""
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"z: expected a 2-D float32/bfloat16/float16 tensor [N, r], got {_describe(z)}")
    _check_seed(seed, z.device)
    if resolve_kernel(kernel, z.device) == "torch":
        return _torch_quantize(z, seed)
    return _triton_quantize(z.contiguous(), seed)


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, kernel: str = "auto") -> torch.Tensor:
    """Z ≈ q * scale[:, None] in `dtype` (the inverse of 8-bit `fused_project`)."""
    if not isinstance(q, torch.Tensor) or q.dim() != 2 or q.dtype != torch.int8:
        raise ValueError(f"q: expected a 2-D int8 tensor, got {_describe(q)}")
    if not isinstance(scale, torch.Tensor) or scale.shape != (q.shape[0],) or scale.dtype != torch.float32:
        raise ValueError(f"scale: expected float32 of shape ({q.shape[0]},), got {_describe(scale)}")
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"dtype={dtype}: accepted is one of {list(_FLOAT_DTYPES)}")
    if resolve_kernel(kernel, q.device) == "torch":
        return torch_dequantize(q, scale, dtype)
    return _triton_dequantize(q.contiguous(), scale.contiguous(), dtype)


def _check_project_args(x2d, q_fwd, storage_bits, seed) -> None:
    if not isinstance(x2d, torch.Tensor) or x2d.dim() != 2 or x2d.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"x2d: expected a 2-D float32/bfloat16/float16 tensor [N, n], got {_describe(x2d)}")
    if not isinstance(q_fwd, torch.Tensor) or q_fwd.dim() != 2 or q_fwd.dtype != torch.float32:
        raise ValueError(f"q_fwd: expected a 2-D float32 tensor [n, r], got {_describe(q_fwd)}")
    if q_fwd.shape[0] != x2d.shape[1]:
        raise ValueError(f"q_fwd: has {q_fwd.shape[0]} rows but x2d has n={x2d.shape[1]} columns; they must match")
    if q_fwd.device != x2d.device:
        raise ValueError(f"q_fwd: on {q_fwd.device}, x2d on {x2d.device}; they must share a device")
    if storage_bits not in (16, 8) or isinstance(storage_bits, bool):
        raise ValueError(f"storage_bits={storage_bits!r}: accepted is 16 or 8")
    _check_seed(seed, x2d.device)


def _check_seed(seed, device) -> None:
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64 or seed.shape != (2,) or seed.device != torch.device(device):
            raise ValueError(f"seed: a key tensor must be int64 of shape (2,) on {device}, got "
                             f"{_describe(seed)} on {seed.device}")
    elif seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ValueError(f"seed={seed!r}: accepted is None, an integer in [0, 2**63) or an int64 key tensor")


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} tensor of shape {tuple(t.shape)}"
    return type(t).__name__
