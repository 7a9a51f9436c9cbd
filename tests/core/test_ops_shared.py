"""Each lean op's pieces exist once: LayerNorm evaluates with the math it trains with, GELU casts through
one helper, and every op saves its input through ops/_saved.py (the same draws as compressing by hand)."""

import pytest
import torch
import torch.nn.functional as F

from prac_dist.core.subspace import Compressor
from prac_dist.ops.gelu import gelu_cast, lean_gelu
from prac_dist.ops.gelu_linear import gelu_linear, quantize_through_gelu
from prac_dist.ops.layernorm import lean_layer_norm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_norm_evaluates_with_the_training_math(dtype):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 32, generator=gen) * 3 + 1).to(dtype)
    w, b = torch.randn(32, generator=gen).to(dtype), torch.randn(32, generator=gen).to(dtype)
    train = lean_layer_norm(x.clone().requires_grad_(), w, b, 1e-5)
    with torch.no_grad():
        evaluated = lean_layer_norm(x, w, b, 1e-5)
    assert torch.equal(train.detach(), evaluated)  # bit for bit: one function computes both
    # and it is LayerNorm: float32 statistics agree with F.layer_norm to float32 rounding (4e-6 measured at d 32)
    ref = F.layer_norm(x.float(), (32,), w.float(), b.float(), 1e-5).to(dtype)
    assert torch.allclose(evaluated.float(), ref.float(), atol=1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_forward_eval_and_recompute_are_one_cast(approximate):
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(5, 16, generator=gen).to(torch.bfloat16)
    w = torch.randn(8, 16, generator=gen).to(torch.bfloat16)
    want = gelu_cast(h, approximate)
    assert want.dtype == torch.bfloat16 and torch.equal(want, F.gelu(h.float(), approximate=approximate).to(h.dtype))
    assert torch.equal(lean_gelu(h.clone().requires_grad_(), approximate).detach(), want)
    with torch.no_grad():
        assert torch.equal(lean_gelu(h, approximate), want)
        assert torch.equal(gelu_linear(h, approximate, w, None), F.linear(want, w))


@pytest.mark.parametrize("op", ["gelu", "layer_norm"])
def test_compressed_input_is_the_compressors_own_form(op):
    """gelu and LayerNorm save what comp.compress returns with prepare's key: backward sees the same
    unbiased X~ as a by-hand refresh, key, compress, decompress on a twin compressor."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(64, 16, generator=gen)
    comps = [Compressor("c", 16, 4, 4, seed=0, per_rank_random=False, storage_bits=8, kernel="torch")
             for _ in range(2)]
    xg = x.clone().requires_grad_()
    if op == "gelu":
        y = lean_gelu(xg, "none", comps[0])
    else:
        y = lean_layer_norm(xg, None, None, 1e-5, comps[0])
    saved = [t for t in y.grad_fn.saved_tensors if t is not None and t.dtype == torch.int8]
    twin = comps[1]
    twin.refresh(x)
    by_hand = twin.compress(x, twin.next_seed())
    assert len(saved) == 1 and torch.equal(saved[0], [t for t in by_hand if t.dtype == torch.int8][0])


def test_gelu_mlp_stores_h_once_through_the_gelu_quantizer():
    """With an int8 compressor the GELU MLP saves one int8 copy of h (no gelu(h), no bf16 h): the codes of
    quantize_through_gelu under the compressor's next key, as a twin compressor draws it by hand."""
    gen = torch.Generator().manual_seed(3)
    h, w = torch.randn(64, 32, generator=gen), torch.randn(8, 32, generator=gen)
    comps = [Compressor("c", 32, 0, 0, seed=0, per_rank_random=False, kernel="torch", storage="int8")
             for _ in range(2)]
    y = gelu_linear(h.clone().requires_grad_(), "tanh", w, None, comp=comps[0])
    saved = y.grad_fn.saved_tensors[1:]  # (weight, *stored form of h)
    twin = comps[1]
    twin.refresh(h)
    codes, scale = quantize_through_gelu(h, "tanh", twin.next_seed())
    assert len(saved) == 2 and torch.equal(saved[0], codes) and torch.equal(saved[1], scale)
    assert torch.equal(y.detach(), gelu_linear(h, "tanh", w, None))  # the forward never sees the rounding
