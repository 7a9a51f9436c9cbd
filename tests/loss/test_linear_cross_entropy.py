"""linear_cross_entropy against the standard head: F.cross_entropy(F.linear(h, W, b).float(), y)."""

import pytest
import torch
import torch.nn.functional as F

from prac_dist.loss import auto_chunk_size, linear_cross_entropy

IGNORE = -100


def _reference(h, w, b, y, **kw):
    logits = F.linear(h, w, b).float()
    return F.cross_entropy(logits.view(-1, w.shape[0]), y.view(-1), ignore_index=IGNORE, **kw)


def _grads(fn, tensors):
    for t in tensors:
        t.grad = None
    loss = fn()
    loss.backward()
    return loss.detach(), [t.grad.clone() for t in tensors]


def _inputs(shape, d, vocab, dtype, bias=True, seed=0, ignore_every=4):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*shape, d, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(vocab, d, generator=g) / d**0.5).to(dtype).requires_grad_()
    b = torch.randn(vocab, generator=g).to(dtype).requires_grad_() if bias else None
    y = torch.randint(0, vocab, shape, generator=g)
    y.view(-1)[::ignore_every] = IGNORE
    return h, w, b, y


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


# Odd shapes (Liger style): prime token counts, vocabularies not a multiple of anything,
# chunk sizes that leave a ragged last chunk, 1 row per chunk, and one chunk for everything.
@pytest.mark.parametrize("shape,d,vocab,chunk", [
    ((6, 7), 42, 123, 5),
    ((1, 43), 16, 431, 1),
    ((3, 17), 24, 97, 51),
    ((2, 9), 32, 512, 1000),
])
def test_float32_loss_and_all_grads_match_reference(shape, d, vocab, chunk):
    h, w, b, y = _inputs(shape, d, vocab, torch.float32)
    params = [h, w, b]
    ref, ref_g = _grads(lambda: _reference(h, w, b, y), params)
    out, out_g = _grads(lambda: linear_cross_entropy(h, w, y, b, chunk_size=chunk), params)
    # float32 rounding: sums over <= 512 terms reordered -> a few ulps (ulp(1) = 1.2e-7).
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=2e-6)
    for got, want in zip(out_g, ref_g):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_sum_reduction_and_num_items_in_batch():
    h, w, b, y = _inputs((4, 11), 16, 77, torch.float32)
    params = [h, w, b]
    ref, ref_g = _grads(lambda: _reference(h, w, b, y, reduction="sum"), params)
    out, out_g = _grads(lambda: linear_cross_entropy(h, w, y, b, reduction="sum", chunk_size=6), params)
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=1e-5)
    for got, want in zip(out_g, ref_g):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # HF's gradient-accumulation form: sum / num_items_in_batch (a tensor or an int).
    for n in (torch.tensor(57), 57):
        out = linear_cross_entropy(h, w, y, b, num_items_in_batch=n, chunk_size=6)
        torch.testing.assert_close(out, ref.detach() / 57, rtol=2e-6, atol=1e-7)


def test_ignored_rows_get_zero_gradient_and_do_not_count():
    h, w, b, y = _inputs((2, 10), 8, 33, torch.float32, ignore_every=3)
    out, (gh, _, _) = _grads(lambda: linear_cross_entropy(h, w, y, b, chunk_size=3), [h, w, b])
    ignored = (y == IGNORE)
    assert ignored.any() and (~ignored).any()
    assert torch.count_nonzero(gh[ignored]) == 0
    assert torch.all(gh[~ignored].abs().sum(-1) > 0)
    # The mean is over the non-ignored rows only: equal to the reference on those rows alone.
    keep = ~ignored.view(-1)
    ref = _reference(h.detach().view(-1, 8)[keep], w.detach(), b.detach(), y.view(-1)[keep])
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=2e-6)


def test_custom_ignore_index_and_no_bias():
    h, w, _, y = _inputs((3, 5), 8, 40, torch.float32, bias=False)
    y.view(-1)[::2] = 7  # 7 is now the ignored class, -100 would be out of range
    y[y == IGNORE] = 3
    ref = F.cross_entropy(F.linear(h, w).float().view(-1, 40), y.view(-1), ignore_index=7)
    out = linear_cross_entropy(h, w, y, ignore_index=7, chunk_size=4)
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=2e-6)


def test_bfloat16_matches_hf_upcast_within_one_bf16_ulp():
    # Logits are the same bf16 matmul results upcast to float32, so the loss and dX agree to
    # float32 rounding. dW is accumulated per chunk from bf16 chunk products (one bf16 rounding
    # per chunk, summed in float32), the reference rounds once: we allow 2^-7 relative to the
    # largest entry (2 bf16 ulps).
    h, w, b, y = _inputs((4, 33), 64, 300, torch.bfloat16)
    params = [h, w, b]
    ref, ref_g = _grads(lambda: _reference(h, w, b, y), params)
    out, out_g = _grads(lambda: linear_cross_entropy(h, w, y, b, chunk_size=16), params)
    assert out.dtype == torch.float32 and all(g.dtype == torch.bfloat16 for g in out_g)
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=2e-6)
    for got, want in zip(out_g, ref_g):
        assert _rel(got, want) <= 2**-7


def test_autocast_matches_autocast_reference():
    # float32 parameters under bf16 autocast: F.linear runs in bf16, the loss in float32,
    # the gradients come back in float32 -- ours must follow the same casts.
    h, w, b, y = _inputs((3, 21), 32, 211, torch.float32)
    params = [h, w, b]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, ref_g = _grads(lambda: _reference(h, w, b, y), params)
        out, out_g = _grads(lambda: linear_cross_entropy(h, w, y, b, chunk_size=10), params)
    assert all(g.dtype == torch.float32 for g in out_g)
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=2e-6)
    for got, want in zip(out_g, ref_g):
        assert _rel(got, want) <= 2**-7
    # And it is genuinely the bf16 result, not a float32 one (which differs by ~1e-3 here).
    full = _reference(h.detach(), w.detach(), b.detach(), y)
    assert (out - full).abs() > 1e-5


def test_saves_no_vocab_sized_tensor_and_the_weight_parameter_itself():
    h, w, b, y = _inputs((8, 16), 32, 2000, torch.float32)
    w = torch.nn.Parameter(w.detach())
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = linear_cross_entropy(h, w, y, b, chunk_size=16)
    n = h.shape[0] * h.shape[1]
    assert any(t is w for t in saved), "the weight Parameter itself must be saved (ZeRO-3 / FSDP2 re-gather)"
    others = [t for t in saved if t is not w and t is not b]
    assert max(t.numel() for t in others) == n * 32  # the hidden states; nothing N x vocab
    # hidden (N x d fp32) + labels (N int64) + logsumexp (N fp32) + the mean's divisor.
    assert sum(t.numel() * t.element_size() for t in others) <= n * (32 * 4 + 8 + 4) + 64
    loss.backward()
    assert w.grad is not None and w.grad.shape == w.shape


def test_gradient_accumulates_across_calls():
    # Two micro-batches accumulate into .grad exactly as two standard-head backwards do.
    h, w, b, y = _inputs((2, 13), 16, 50, torch.float32)
    h2, _, _, y2 = _inputs((2, 13), 16, 50, torch.float32, seed=1)
    for fn in (_reference, lambda *a: linear_cross_entropy(*a[:2], a[3], a[2], chunk_size=5)):
        w.grad = None
        fn(h, w, b, y).backward()
        fn(h2, w, b, y2).backward()
        if fn is _reference:
            want = w.grad.clone()
    torch.testing.assert_close(w.grad, want, rtol=1e-5, atol=1e-6)


def test_all_rows_ignored_gives_nan_like_pytorch():
    h, w, b, y = _inputs((1, 4), 8, 10, torch.float32)
    y.fill_(IGNORE)
    assert torch.isnan(_reference(h, w, b, y)) and torch.isnan(linear_cross_entropy(h, w, y, b))


def test_auto_chunk_size():
    assert auto_chunk_size(100_000, 32000) == 524  # 64 MiB of float32 logits
    assert auto_chunk_size(10, 32000) == 10
    assert auto_chunk_size(10**6, 2**26) == 1


@pytest.mark.parametrize("kwargs,match", [
    ({"reduction": "none"}, "reduction='none'"),
    ({"chunk_size": 0}, "chunk_size=0"),
    ({"chunk_size": True}, "chunk_size=True"),
])
def test_bad_arguments_name_the_field(kwargs, match):
    h, w, b, y = _inputs((1, 4), 8, 10, torch.float32)
    with pytest.raises(ValueError, match=match):
        linear_cross_entropy(h, w, y, b, **kwargs)


def test_bad_labels_and_shapes():
    h, w, b, y = _inputs((1, 4), 8, 10, torch.float32)
    y[0, 1] = 10
    with pytest.raises(ValueError, match="labels contain 10"):
        linear_cross_entropy(h, w, y, b)
    with pytest.raises(ValueError, match="labels has shape"):
        linear_cross_entropy(h, w, y[:, :2], b)
    with pytest.raises(ValueError, match="labels has dtype"):
        linear_cross_entropy(h, w, y.float(), b)
    with pytest.raises(ValueError, match="hidden has last dimension"):
        linear_cross_entropy(h[..., :4], w, y, b)
