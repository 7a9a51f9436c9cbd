"""Triton lean RMSNorm and SwiGLU vs their PyTorch references, forward and backward.

Run by test_kernels_triton.py in a subprocess with TRITON_INTERPRET=1 (see there why),
or directly on a GPU box: `pytest tests/kernels/interp_norm_act.py`.
"""

from __future__ import annotations

import os

import pytest
import torch

from _kernels_testutil import DTYPES, U32, assert_within, kernel_device
from prac_dist.kernels import (quantize, rmsnorm_backward, rmsnorm_forward, rmsnorm_project_forward,
                               swiglu_backward, swiglu_forward, swiglu_project_forward)
from prac_dist.kernels.rmsnorm import torch_rmsnorm_backward, torch_rmsnorm_forward, torch_rmsnorm_project_forward
from prac_dist.kernels.swiglu import torch_swiglu_backward, torch_swiglu_forward, torch_swiglu_project_forward
from prac_dist.ops.rmsnorm import lean_rms_norm
from prac_dist.ops.swiglu import lean_swiglu

DEVICE = kernel_device()
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs a GPU or TRITON_INTERPRET=1 set before triton is imported", allow_module_level=True)

EPS = 1e-6
SHAPES = [(N, n) for N in (1, 7, 129) for n in (17, 64, 250)]


def _rand(*shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,n", SHAPES)
def test_rmsnorm_forward_matches_reference(N, n, dtype):
    x, w = _rand(N, n, dtype=dtype, seed=N + n), _rand(n, dtype=dtype, seed=n)
    y, rstd = rmsnorm_forward(x, w, EPS, kernel="triton")
    y_ref, rstd_ref = torch_rmsnorm_forward(x, w, EPS)
    # rstd: float32 sum of n squares in another order, then sqrt and division (each
    # correctly rounded): relative error <= (n + 2)·u.
    assert_within(rstd, rstd_ref, (n + 2) * U32 * rstd_ref.abs(), ulps=0, what="rstd")
    # y: float32 error of rstd carried through; for bf16 two roundings (x·rstd, then ·w)
    # may each land on the other neighbour (interpreter truncates, torch rounds to
    # nearest): 1.5 ulp of x_norm scaled by |w| (<= 3 ulp of y, since ulp(w·a) >= |w|·ulp(a)/2)
    # plus 1.5 ulp of y.
    bound = (n + 4) * U32 * y_ref.float().abs()
    assert_within(y, y_ref, bound, ulps=4.5, what="y")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,n", SHAPES)
def test_rmsnorm_backward_matches_reference(N, n, dtype):
    x, w = _rand(N, n, dtype=dtype, seed=N * n), _rand(n, dtype=dtype, seed=n + 1)
    dy = _rand(N, n, dtype=dtype, seed=N + 2 * n)
    _, rstd = torch_rmsnorm_forward(x, w, EPS)
    dx, dw = rmsnorm_backward(dy, x, w, rstd, kernel="triton")
    dx_ref, dw_ref = torch_rmsnorm_backward(dy, x, w, rstd)
    # dx = rstd·(g - x̂·mean(g·x̂)): the float32 error is bounded by (n + 4)·u times the
    # magnitudes that enter it, |rstd|·(|g| + |x̂|·mean|g·x̂|), not by |dx| (cancellation).
    xh = x.float() * rstd[:, None]
    g = dy.float() * w.float()
    scale = rstd[:, None] * (g.abs() + xh.abs() * (g * xh).abs().mean(-1, keepdim=True))
    assert_within(dx, dx_ref, (n + 4) * U32 * scale, ulps=1.5, what="dx")
    # dw: a float32 sum over N rows of dy·x̂ (x̂ rounded to x's dtype: 1.5 ulp apart under
    # the interpreter, weighted by |dy|), then one rounding to w's dtype.
    terms = dy.float().abs() * xh.to(dtype).float().abs()
    bound = (N + 2) * U32 * terms.sum(0)
    if dtype != torch.float32:
        bound = bound + 1.5 * (dy.float().abs() * (2.0**-7) * xh.abs()).sum(0)
    assert_within(dw, dw_ref, bound, ulps=1.5, what="dw")


def test_rmsnorm_function_gradients():
    # The op's one autograd Function (prac_dist.ops.rmsnorm): Triton against its kernel='torch' reference.
    grads = {}
    for kernel in ("triton", "torch"):
        x = _rand(3, 5, 64, dtype=torch.float32, seed=9).requires_grad_()
        w = _rand(64, dtype=torch.float32, seed=10).requires_grad_()
        dy = _rand(3, 5, 64, dtype=torch.float32, seed=11)
        lean_rms_norm(x, w, EPS, None, kernel).backward(dy)
        grads[kernel] = (x.grad, w.grad)
    for got, ref in zip(grads["triton"], grads["torch"]):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1,), (7, 17), (129, 250), (3, 5, 64), (1, 2049)])
def test_swiglu_matches_reference(shape, dtype):
    g, u = _rand(*shape, dtype=dtype, seed=1), _rand(*shape, dtype=dtype, seed=2)
    dh = _rand(*shape, dtype=dtype, seed=3)
    h = swiglu_forward(g, u, kernel="triton")
    # Elementwise float32 math, only sigmoid's implementation differs (exp + divide,
    # a few ulp): 8 u relative; bf16 outputs may round to the other neighbour: 1.5 ulp.
    ref = torch_swiglu_forward(g, u)
    assert_within(h, ref, 8 * U32 * ref.float().abs(), ulps=1.5, what="h")
    dg, du = swiglu_backward(dh, g, u, kernel="triton")
    dg_ref, du_ref = torch_swiglu_backward(dh, g, u)
    gf, uf, dhf = g.float(), u.float(), dh.float()
    # dg = dh·u·σ(1 + g(1 - σ)): 1 + g(1 - σ) can cancel for g < 0, so bound by the magnitudes
    # of its terms, not by |dg|.
    s = torch.sigmoid(gf)
    dg_scale = (dhf * uf * s).abs() * (1 + (gf * (1 - s)).abs())
    assert_within(dg, dg_ref, 16 * U32 * dg_scale, ulps=1.5, what="dg")
    assert_within(du, du_ref, 8 * U32 * du_ref.float().abs(), ulps=1.5, what="du")


def test_swiglu_function_gradients():
    # The op's one autograd Function (prac_dist.ops.swiglu): Triton against its kernel='torch' reference.
    grads = {}
    for kernel in ("triton", "torch"):
        g = _rand(4, 33, dtype=torch.float32, seed=4).requires_grad_()
        u = _rand(4, 33, dtype=torch.float32, seed=5).requires_grad_()
        dh = _rand(4, 33, dtype=torch.float32, seed=6)
        lean_swiglu(g, u, None, None, kernel).backward(dh)
        grads[kernel] = (g.grad, u.grad)
    for got, ref in zip(grads["triton"], grads["torch"]):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)



@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,n,r", [(1, 17, 5), (7, 64, 33), (129, 250, 70), (65, 96, 130)])
def test_rmsnorm_project_forward_matches_reference(N, n, r, dtype):
    # The fused norm + projection: the same (y, rstd) as the norm kernel and the same Z as the
    # 16-bit projection. r = 130 > 64 spans several column tiles (only tile 0 writes y and rstd).
    x, w = _rand(N, n, dtype=dtype, seed=N + n), _rand(n, dtype=dtype, seed=n)
    q = _rand(n, r, dtype=torch.float32, seed=r) / n ** 0.5
    y, rstd, z = rmsnorm_project_forward(x, w, EPS, q, kernel="triton")
    y_ref, rstd_ref, z_ref = torch_rmsnorm_project_forward(x, w, EPS, q)
    # rstd and y: the bounds of test_rmsnorm_forward_matches_reference (chunked sum of squares).
    assert_within(rstd, rstd_ref, (n + 2) * U32 * rstd_ref.abs(), ulps=0, what="rstd")
    assert_within(y, y_ref, (n + 4) * U32 * y_ref.float().abs(), ulps=4.5, what="y")
    # Z: float32 dot of n exact products in another order, Higham's n·u·Σ|x_k q_k|; bf16 output
    # may round to the other neighbour (1.5 ulp).
    qx = q.to(dtype).float()
    bound = n * U32 * (x.float().abs() @ qx.abs())
    assert_within(z, z_ref, bound, ulps=1.5, what="z")
    codes, scale = quantize(z, seed=3, kernel="triton")
    assert codes.dtype == torch.int8 and scale.shape == (N,)
    # Stochastic rounding moves each code by less than one step of its row's scale.
    assert ((codes.float() * scale[:, None] - z.float()).abs() <= scale[:, None] * (1 + 1e-6)).all()



@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,n,rg,ru", [(1, 17, 5, 5), (7, 64, 33, 20), (129, 250, 70, 130)])
def test_swiglu_project_forward_matches_reference(N, n, rg, ru, dtype):
    # The fused SwiGLU + both projections: h as the SwiGLU kernel, Zg and Zu as the 16-bit
    # projection (rg != ru: the column tiles past the shorter basis store only the longer one).
    g, u = _rand(N, n, dtype=dtype, seed=1), _rand(N, n, dtype=dtype, seed=2)
    qg = _rand(n, rg, dtype=torch.float32, seed=3) / n ** 0.5
    qu = _rand(n, ru, dtype=torch.float32, seed=4) / n ** 0.5
    h, zg, zu = swiglu_project_forward(g, u, qg, qu, kernel="triton")
    h_ref, zg_ref, zu_ref = torch_swiglu_project_forward(g, u, qg, qu)
    # Bounds as in test_swiglu_matches_reference (h) and test_rmsnorm_project_forward_matches_reference (Z).
    assert_within(h, h_ref, 8 * U32 * h_ref.float().abs(), ulps=1.5, what="h")
    for z, z_ref, x, q, what in ((zg, zg_ref, g, qg, "zg"), (zu, zu_ref, u, qu, "zu")):
        bound = n * U32 * (x.float().abs() @ q.to(dtype).float().abs())
        assert_within(z, z_ref, bound, ulps=1.5, what=what)


@pytest.mark.parametrize("compress_nonlinear", [False, True], ids=["lean", "compressed"])
def test_patched_llama_runs_the_triton_norm_and_swiglu(compress_nonlinear):
    # apply_prac(kernel='triton') must route the model's RMSNorm and SwiGLU (and the projections)
    # through the Triton kernels and give what kernel='torch' gives. Full rank (r1 + r2 = n) makes
    # the result independent of the bases, so the only differences left are float32 summation
    # order inside the kernels: observed ~1e-7 relative, asserted at 1e-4 (a wrong wiring, e.g. a
    # missing rstd or a swapped gate/up, is O(1)).
    from transformers import LlamaConfig, LlamaForCausalLM

    from prac_dist import PRACConfig, apply_prac

    def run(kernel):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
        model = model.to(DEVICE)
        apply_prac(model, PRACConfig(principal_ratio=0.5, random_ratio=0.5, nonlinear_principal_ratio=0.5,
                                     nonlinear_random_ratio=0.5, compress_nonlinear=compress_nonlinear,
                                     kernel=kernel, fused_loss=False, linear_storage="project",
                                     nonlinear_storage="project", storage_bits=16))
        norm = model.model.layers[0].input_layernorm
        mlp = model.model.layers[0].mlp
        assert (type(norm).__name__, norm.kernel, type(mlp).__name__, mlp.kernel) == (
            "PRACRMSNorm", kernel, "PRACSwiGLUMLP", kernel)
        ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1)).to(DEVICE)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}

    loss_t, grads_t = run("triton")
    loss_ref, grads_ref = run("torch")
    torch.testing.assert_close(loss_t, loss_ref, rtol=1e-5, atol=0)
    for name, g in grads_ref.items():
        torch.testing.assert_close(grads_t[name], g, rtol=1e-4, atol=1e-4 * g.abs().max().item(), msg=name)
