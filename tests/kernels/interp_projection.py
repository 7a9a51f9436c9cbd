"""Triton fused projection / int8 storage vs the PyTorch reference.

Run by test_kernels_triton.py in a subprocess with TRITON_INTERPRET=1 (see there why),
or directly on a GPU box: `pytest tests/kernels/interp_projection.py`.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from _kernels_testutil import DTYPES, U32, assert_within, kernel_device
from prac_dist.kernels import dequantize, fused_project
from prac_dist.kernels.projection import _torch_quantize, _triton_quantize, torch_dequantize, torch_fused_project

DEVICE = kernel_device()
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs a GPU or TRITON_INTERPRET=1 set before triton is imported", allow_module_level=True)


def _inputs(N, n, r, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, n, generator=gen).to(dtype).to(DEVICE)
    q = torch.randn(n, r, generator=gen).to(DEVICE)
    return x, q


def _fp32_bound(x, q):
    # Different summation order (kernel: 32-wide K tiles; torch: BLAS): Higham's bound
    # |fl(x·q) - x·q| <= n·u·Σ|x_j q_j| per entry, with q already rounded to x's dtype.
    qr = q.to(x.dtype).float()
    return x.shape[1] * U32 * (x.float().abs() @ qr.abs())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,n,r", [(N, n, r) for N in (1, 7, 129) for n in (17, 64, 250) for r in (1, 5, 33)])
def test_project_16bit_matches_reference(N, n, r, dtype):
    x, q = _inputs(N, n, r, dtype)
    z, scale = fused_project(x, q, 16, kernel="triton")
    z_ref, _ = torch_fused_project(x, q, 16)
    assert scale is None
    # bf16 output: the interpreter truncates float32 -> bf16 and torch rounds to nearest,
    # so the two may sit on neighbouring bf16 values: up to 1.5 ulp apart (1 + 1/2).
    assert_within(z, z_ref, _fp32_bound(x, q), ulps=1.5, what="z")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,n,r", [(1, 17, 1), (7, 64, 5), (129, 250, 33), (7, 17, 33)])
def test_project_8bit_scale_exact_codes_within_one_step(N, n, r, dtype):
    x, q = _inputs(N, n, r, dtype, seed=1)
    z16, _ = fused_project(x, q, 16, kernel="triton")
    codes, scale = fused_project(x, q, 8, seed=1234, kernel="triton")
    assert codes.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (N,)
    # The scale is deterministic: exactly absmax of what 16-bit storage keeps, / 127.
    z = z16.float()
    assert torch.equal(scale, z.abs().amax(1) / 127.0)
    # Each code is floor(v) or floor(v) + 1 of v = z / s (|q s - z| < s: within one step).
    v = (z / scale[:, None]).clamp(-127, 127)
    lo = torch.floor(v)
    assert bool(((codes.float() == lo) | (codes.float() == lo + 1)).all())
    # The reference quantizer on the same z draws the same counter-based noise (u from the hash of
    # the seed and the element index, uint32 in the kernel, int64 in torch): same codes, same scale.
    ref_codes, ref_scale = _torch_quantize(z16, seed=1234)
    assert torch.equal(ref_scale, scale)
    assert torch.equal(ref_codes, codes)
    # A key tensor (what a Compressor passes, made on the device by rounding_key) names the same noise.
    key = torch.tensor([1234, 0], dtype=torch.int64, device=DEVICE)
    assert torch.equal(fused_project(x, q, 8, seed=key, kernel="triton")[0], codes)


def test_stochastic_rounding_is_unbiased():
    # One row z of 33 values, quantized K = 512 times (512 rows: distinct element indices,
    # so independent hash draws, one launch). Each code is Bernoulli(frac) above floor(v): Var(q s) <= s²/4,
    # so the mean of K draws has std <= s / (2 sqrt(K)). Tolerance 6 sigma per element:
    # P(any of 33 entries beyond) < 33 * 2e-9.
    K, r = 512, 33
    gen = torch.Generator().manual_seed(5)
    z_row = torch.randn(1, r, generator=gen)
    z = z_row.expand(K, r).contiguous().to(DEVICE)
    codes, scale = _triton_quantize(z, seed=77)
    s = float(scale[0])
    assert torch.equal(scale, torch.full_like(scale, s))
    mean = (codes.float() * scale[:, None]).mean(0).cpu()
    tol = 6 * s / (2 * math.sqrt(K))
    err = (mean - z_row[0]).abs()
    assert float(err.max()) <= tol, (float(err.max()), tol)
    # Power check: round-to-nearest (biased) misses this tolerance on these values, so
    # the check above can fail.
    nearest = torch.round(z_row[0] / s) * s
    assert float((nearest - z_row[0]).abs().max()) > tol


def test_same_seed_replays_and_new_seed_redraws():
    x, q = _inputs(7, 64, 33, torch.bfloat16, seed=3)
    a, sa = fused_project(x, q, 8, seed=11, kernel="triton")
    b, sb = fused_project(x, q, 8, seed=11, kernel="triton")
    c, _ = fused_project(x, q, 8, seed=12, kernel="triton")
    assert torch.equal(a, b) and torch.equal(sa, sb)  # a checkpoint recompute stores the same codes
    assert not torch.equal(a, c)


def test_zero_rows_give_zero_scale_and_codes():
    x, q = _inputs(7, 17, 5, torch.float32, seed=4)
    x[2] = 0.0
    codes, scale = fused_project(x, q, 8, seed=0, kernel="triton")
    assert float(scale[2]) == 0.0 and not bool(codes[2].any())
    out = dequantize(codes, scale, torch.float32, kernel="triton")
    assert bool(torch.isfinite(out).all()) and not bool(out[2].any())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,r", [(1, 1), (7, 33), (129, 5)])
def test_dequantize_matches_reference(N, r, dtype):
    gen = torch.Generator().manual_seed(N * r)
    codes = torch.randint(-127, 128, (N, r), generator=gen, dtype=torch.int8).to(DEVICE)
    scale = torch.rand(N, generator=gen).to(DEVICE)
    out = dequantize(codes, scale, dtype, kernel="triton")
    ref = torch_dequantize(codes, scale, dtype)
    if dtype == torch.float32:
        assert torch.equal(out, ref)  # one float32 multiply on both sides: bit-exact
    else:
        # Same float32 product; the interpreter truncates to bf16 where torch rounds: <= 1 ulp.
        assert_within(out, ref, torch.zeros(()), ulps=1.0, what="dequantized z")


def test_non_contiguous_input():
    x, q = _inputs(17, 64, 5, torch.float32, seed=6)
    xt = x.t().contiguous().t()  # same values, column-major strides
    assert not xt.is_contiguous()
    z, _ = fused_project(xt, q, 16, kernel="triton")
    assert_within(z, torch_fused_project(x, q, 16)[0], _fp32_bound(x, q), ulps=0, what="z")
