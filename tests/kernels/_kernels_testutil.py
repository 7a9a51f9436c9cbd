"""Shared helpers of tests/kernels: the device kernels run on, and ulp-based tolerances."""

from __future__ import annotations

import os

import torch

DTYPES = (torch.float32, torch.bfloat16)
U32 = 2.0**-24  # float32 unit roundoff


def kernel_device() -> str:
    """'cuda' on a GPU box; 'cpu' under Triton's interpreter (TRITON_INTERPRET=1, set before import)."""
    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return "cuda"
    return "cpu"


def ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of `dtype` at |values| (float32 tensor): 2^(floor(log2|v|) - mantissa bits)."""
    bits = {torch.float32: 23, torch.bfloat16: 7, torch.float16: 10}[dtype]
    tiny = torch.finfo(dtype).tiny
    exponent = torch.floor(torch.log2(values.abs().clamp_min(tiny)))
    return torch.exp2(exponent - bits)


def assert_within(actual: torch.Tensor, expected: torch.Tensor, fp32_bound: torch.Tensor, ulps: float, what: str):
    """|actual - expected| <= fp32_bound + ulps * ulp(output dtype) at the larger magnitude.

    fp32_bound: the float32 rounding-error bound of the computation (summation order
    differs between the kernel's tiles and torch); ulps: how many output-dtype roundings
    may land on different neighbours (0 for float32 outputs).
    """
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (actual.shape, expected.shape)
    a, e = actual.float(), expected.float()
    diff = (a - e).abs()
    limit = fp32_bound + (ulps * ulp(torch.maximum(a.abs(), e.abs()), actual.dtype) if actual.dtype != torch.float32 else 0)
    bad = diff > limit
    assert not bad.any(), (
        f"{what}: {int(bad.sum())}/{diff.numel()} elements off; worst |diff|={float(diff.max()):.3g} "
        f"where the limit is {float(limit.flatten()[diff.flatten().argmax()]):.3g}"
    )
