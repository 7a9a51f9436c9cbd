"""The PyTorch references (the CPU path of every op) and the dispatch rules.

The references are what `kernel="torch"` and `"auto"` on CPU run, and what the Triton
kernels are held to (test_kernels_triton.py), so they are checked here against the
modules they replace: HF's LlamaRMSNorm, autograd of silu(g)·u, and the statistics
of stochastic rounding.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prac_dist.kernels import (
    dequantize,
    fused_project,
    resolve_kernel,
    rmsnorm_backward,
    rmsnorm_forward,
    swiglu_backward,
    swiglu_forward,
    triton_available,
)
from prac_dist.kernels.projection import _torch_quantize

DTYPES = (torch.float32, torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rmsnorm_reference_is_hf_llama_rmsnorm(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    norm = LlamaRMSNorm(64, eps=1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(64))
    x = torch.randn(2, 7, 64).to(dtype).requires_grad_()
    y_hf = norm(x)
    y, rstd = rmsnorm_forward(x.detach().reshape(-1, 64), norm.weight.detach(), 1e-6)
    # Same ops in the same order on the same device: bit-exact.
    assert torch.equal(y, y_hf.detach().reshape(-1, 64))
    dy = torch.randn_like(y_hf)
    y_hf.backward(dy)
    dx, dw = rmsnorm_backward(dy.reshape(-1, 64), x.detach().reshape(-1, 64), norm.weight.detach(), rstd)
    if dtype == torch.float32:
        # Autograd's chain of float32 ops vs one closed form: a few ulp of the inputs' scale.
        torch.testing.assert_close(dx, x.grad.reshape(-1, 64), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dw, norm.weight.grad, rtol=1e-5, atol=1e-5)
    else:
        # HF's bf16 autograd rounds every intermediate gradient to bf16 (8 bits), ours
        # rounds once: a few bf16 ulp (2^-7 relative each) apart, measured against the scale.
        assert float((dx.float() - x.grad.reshape(-1, 64).float()).abs().max()) <= 0.05 * float(dx.float().abs().max())
        assert float((dw.float() - norm.weight.grad.float()).abs().max()) <= 0.05 * float(dw.float().abs().max())


def test_swiglu_reference_is_autograd_of_silu_times_up():
    torch.manual_seed(1)
    g = torch.randn(7, 33, requires_grad=True)
    u = torch.randn(7, 33, requires_grad=True)
    h_ref = F.silu(g) * u
    h = swiglu_forward(g.detach(), u.detach())
    torch.testing.assert_close(h, h_ref.detach(), rtol=2e-7, atol=1e-7)
    dh = torch.randn_like(h)
    h_ref.backward(dh)
    dg, du = swiglu_backward(dh, g.detach(), u.detach())
    torch.testing.assert_close(dg, g.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(du, u.grad, rtol=1e-6, atol=1e-6)


def test_swiglu_rounds_once_in_bf16():
    # silu and the product in float32, one rounding: equals the float32 result rounded.
    torch.manual_seed(2)
    g, u = torch.randn(129, 17).bfloat16(), torch.randn(129, 17).bfloat16()
    assert torch.equal(swiglu_forward(g, u), (F.silu(g.float()) * u.float()).bfloat16())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_project_reference_16bit(dtype):
    torch.manual_seed(3)
    x, q = torch.randn(129, 250).to(dtype), torch.randn(250, 33)
    z, scale = fused_project(x, q, 16)
    assert scale is None and z.dtype == dtype
    # float32 products of dtype-rounded Q, accumulated in float32, rounded once.
    assert torch.equal(z, (x.float() @ q.to(dtype).float()).to(dtype))


def test_project_reference_8bit_unbiased():
    # K = 4000 independent roundings of the same 33 values (K identical rows, one call).
    # Var(q s) <= s²/4 per draw, so the mean has std <= s / (2 sqrt K); 6 sigma per
    # element (P(any of 33 misses) < 1e-7).
    K = 4000
    torch.manual_seed(4)
    x, q = torch.randn(1, 64), torch.randn(64, 33)
    z, _ = fused_project(x, q, 16)
    codes, scale = _torch_quantize(z.expand(K, -1).contiguous(), seed=0)
    s = float(z.abs().max()) / 127
    assert torch.equal(scale, torch.full((K,), s, dtype=torch.float32))
    mean = (codes.double() * s).mean(0)
    tol = 6 * s / (2 * math.sqrt(K))
    assert float((mean - z[0].double()).abs().max()) <= tol
    # Round-to-nearest, a biased rounding, misses the same tolerance: the check has power.
    assert float((torch.round(z[0] / s) * s - z[0]).abs().max()) > tol


def test_project_reference_8bit_codes_and_zero_rows():
    torch.manual_seed(5)
    x, q = torch.randn(7, 17), torch.randn(17, 5)
    x[3] = 0
    z, _ = fused_project(x, q, 16)
    codes, scale = fused_project(x, q, 8, seed=9)
    assert torch.equal(scale, z.abs().amax(1) / 127)
    assert float(scale[3]) == 0.0 and not bool(codes[3].any())
    err = (dequantize(codes, scale, torch.float32) - z).abs()
    assert bool((err <= scale[:, None] * (1 + 1e-6)).all())  # within one quantization step
    assert bool(torch.isfinite(dequantize(codes, scale, torch.bfloat16).float()).all())
    # A fixed seed replays the same codes (checkpoint recompute); None draws from torch's RNG.
    assert torch.equal(codes, fused_project(x, q, 8, seed=9)[0])
    torch.manual_seed(10)
    a = fused_project(x, q, 8)[0]
    torch.manual_seed(10)
    assert torch.equal(a, fused_project(x, q, 8)[0])


def test_8bit_halves_stored_bytes_of_z():
    x, q = torch.randn(4096, 768).bfloat16(), torch.randn(768, 460)
    z16, _ = fused_project(x, q, 16)
    codes, scale = fused_project(x, q, 8, seed=0)
    b16 = z16.numel() * z16.element_size()
    b8 = codes.numel() * codes.element_size() + scale.numel() * scale.element_size()
    assert b8 / b16 == pytest.approx((460 + 4) / (2 * 460))  # 0.504


def test_resolve_kernel(monkeypatch):
    assert resolve_kernel("torch", "cpu") == "torch"
    assert resolve_kernel("auto", "cpu") == "torch"
    assert resolve_kernel("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="kernel='cuda'.*accepted"):
        resolve_kernel("cuda", "cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"kernel='triton' on device cpu"):
        resolve_kernel("triton", "cpu")
    if triton_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert resolve_kernel("triton", "cpu") == "triton"


def test_bad_arguments_name_the_field():
    x, q = torch.randn(7, 17), torch.randn(17, 5)
    with pytest.raises(ValueError, match="storage_bits=4"):
        fused_project(x, q, 4)
    with pytest.raises(ValueError, match="q_fwd: has 16 rows but x2d has n=17"):
        fused_project(x, torch.randn(16, 5))
    with pytest.raises(ValueError, match="q_fwd: expected a 2-D float32"):
        fused_project(x, q.double())
    with pytest.raises(ValueError, match="x2d: expected a 2-D"):
        fused_project(x[0], q)
    with pytest.raises(ValueError, match="seed=-1"):
        fused_project(x, q, 8, seed=-1)
    with pytest.raises(ValueError, match="q: expected a 2-D int8"):
        dequantize(x, torch.ones(7), torch.float32)
    with pytest.raises(ValueError, match="scale: expected float32 of shape"):
        dequantize(torch.zeros(7, 5, dtype=torch.int8), torch.ones(6), torch.float32)
    with pytest.raises(ValueError, match="dtype=torch.int32"):
        dequantize(torch.zeros(7, 5, dtype=torch.int8), torch.ones(7), torch.int32)
    with pytest.raises(ValueError, match="weight: expected shape"):
        rmsnorm_forward(x, torch.ones(16), 1e-6)
    with pytest.raises(ValueError, match="eps=-1"):
        rmsnorm_forward(x, torch.ones(17), -1)
    with pytest.raises(ValueError, match="rstd: expected float32"):
        rmsnorm_backward(x, x, torch.ones(17), torch.ones(6))
    with pytest.raises(ValueError, match="u: .* does not match g"):
        swiglu_forward(x, x[:, :5])
    with pytest.raises(ValueError, match="kernel='fast'"):
        swiglu_forward(x, x, kernel="fast")
