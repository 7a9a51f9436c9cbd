"""linear_cross_entropy against the standard head: F.cross_entropy(F.linear(h, W, b).float(), y)."""

import pytest
import torch
import torch.nn.functional as F

from torch.utils.flop_counter import FlopCounterMode

from prac_dist.loss import auto_chunk_size, linear_cross_entropy
from prac_dist.loss.linear_cross_entropy import store_fits

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
@pytest.mark.parametrize("backward", ["recompute", "store"])
def test_float32_loss_and_all_grads_match_reference(shape, d, vocab, chunk, backward):
    h, w, b, y = _inputs(shape, d, vocab, torch.float32)
    params = [h, w, b]
    ref, ref_g = _grads(lambda: _reference(h, w, b, y), params)
    out, out_g = _grads(lambda: linear_cross_entropy(h, w, y, b, chunk_size=chunk, backward=backward), params)
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


@pytest.mark.parametrize("backward", ["recompute", "store"])
def test_ignored_rows_get_zero_gradient_and_do_not_count(backward):
    h, w, b, y = _inputs((2, 10), 8, 33, torch.float32, ignore_every=3)
    out, (gh, _, _) = _grads(lambda: linear_cross_entropy(h, w, y, b, chunk_size=3, backward=backward), [h, w, b])
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


@pytest.mark.parametrize("backward", ["recompute", "store"])
def test_bfloat16_matches_hf_upcast_within_one_bf16_ulp(backward):
    # Logits are the same bf16 matmul results upcast to float32, so the loss and dX agree to
    # float32 rounding. dW is accumulated per chunk from bf16 chunk products (one bf16 rounding
    # per chunk, summed in float32), the reference rounds once: we allow 2^-7 relative to the
    # largest entry (2 bf16 ulps).
    h, w, b, y = _inputs((4, 33), 64, 300, torch.bfloat16)
    params = [h, w, b]
    ref, ref_g = _grads(lambda: _reference(h, w, b, y), params)
    out, out_g = _grads(lambda: linear_cross_entropy(h, w, y, b, chunk_size=16, backward=backward), params)
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


def test_recompute_saves_no_vocab_sized_tensor_and_the_weight_parameter_itself():
    h, w, b, y = _inputs((8, 16), 32, 2000, torch.float32)
    w = torch.nn.Parameter(w.detach())
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = linear_cross_entropy(h, w, y, b, chunk_size=16, backward="recompute")
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
    ({"backward": "never"}, "backward='never'"),
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


# ---- backward="store": gradients computed in forward (3 head matmuls instead of 4) ----

@pytest.mark.parametrize("backward", ["recompute", "store"])
def test_grad_output_scale_and_accumulation_match_reference(backward):
    # Two micro-batches, HF's num_items_in_batch normalisation and an outer scale (a loss scaler):
    # the stored gradients must be multiplied by the incoming gradient, then accumulate in .grad.
    h, w, b, y = _inputs((2, 13), 16, 50, torch.float32)
    h2, _, _, y2 = _inputs((2, 13), 16, 50, torch.float32, seed=1)
    n = int((y != IGNORE).sum() + (y2 != IGNORE).sum())
    params = [h, h2, w, b]

    def run(loss_fn):
        for t in params:
            t.grad = None
        (loss_fn(h, y) * 3.5).backward()
        (loss_fn(h2, y2) * 3.5).backward()
        return [t.grad.clone() for t in params]

    want = run(lambda x, t: _reference(x, w, b, t, reduction="sum") / n)
    got = run(lambda x, t: linear_cross_entropy(x, w, t, b, num_items_in_batch=n, chunk_size=7, backward=backward))
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


def _head_flops(fn):
    with FlopCounterMode(display=False) as counter:
        fn().backward()
    return counter.get_total_flops()


def test_store_does_three_head_matmuls_recompute_four():
    h, w, _, y = _inputs((4, 32), 64, 1000, torch.float32, bias=False)
    matmul = 2 * 128 * 64 * 1000  # one N x d x V matmul
    assert _head_flops(lambda: _reference(h, w, None, y)) == 3 * matmul
    assert _head_flops(lambda: linear_cross_entropy(h, w, y, chunk_size=40, backward="store")) == 3 * matmul
    assert _head_flops(lambda: linear_cross_entropy(h, w, y, chunk_size=40, backward="recompute")) == 4 * matmul
    # 128 tokens > d = 64: 'auto' keeps the gradients (store_fits), so it does 3.
    assert store_fits(128, 64, 1000, 4, bias=False)
    assert _head_flops(lambda: linear_cross_entropy(h, w, y, chunk_size=40)) == 3 * matmul


def test_store_saves_dx_and_float32_dw_only():
    h, w, b, y = _inputs((8, 16), 32, 2000, torch.bfloat16)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = linear_cross_entropy(h, w, y, b, chunk_size=16, backward="store")
    n = h.shape[0] * h.shape[1]
    assert not any(t is w for t in saved), "store mode needs neither the weight nor the hidden states in backward"
    # dX (N x d bf16) + dW (V x d float32) + db (V float32) + the mean's divisor.
    want = n * 32 * 2 + 2000 * 32 * 4 + 2000 * 4
    assert want <= sum(t.numel() * t.element_size() for t in saved) <= want + 64
    loss.backward()
    with pytest.raises(RuntimeError, match="modified by an inplace operation|backward through the graph a second time"):
        loss.backward()


def test_store_under_no_grad_stores_nothing_and_equals_recompute():
    h, w, b, y = _inputs((2, 9), 16, 70, torch.float32)
    with torch.no_grad():
        a = linear_cross_entropy(h, w, y, b, backward="store")
    torch.testing.assert_close(a, linear_cross_entropy(h.detach(), w.detach(), y, b.detach(), backward="recompute"))
    assert a.grad_fn is None


def test_store_fits_compares_buffers_with_the_float32_logits():
    # LLaMA-130M, bf16, 2,048 tokens: 97 MiB of buffers against 250 MiB of logits -> store.
    assert store_fits(2048, 768, 32000, 2, bias=False)
    # 512 tokens: 4·V·d alone (94 MiB) exceeds the 62.5 MiB of logits -> recompute.
    assert not store_fits(512, 768, 32000, 2, bias=False)


def test_tied_embeddings_gpt2_store_equals_unfused():
    # GPT-2 ties lm_head.weight to wte: dW from the head and from the embedding must add up.
    import transformers
    from prac_dist.loss import install_fused_loss

    cfg = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=2, n_positions=32)
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    fused = transformers.GPT2LMHeadModel(cfg).eval()
    fused.load_state_dict(ref.state_dict())
    assert fused.lm_head.weight is fused.transformer.wte.weight
    assert install_fused_loss(fused)
    ids = torch.randint(0, 100, (2, 24), generator=torch.Generator().manual_seed(1))
    # 2 x 24 = 48 tokens (47 counted after the shift, 48 rows) > d = 32: 'auto' takes 'store'.
    assert store_fits(48, 32, 100, 4, bias=False)
    losses = []
    for model in (ref, fused):
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        losses.append(out.loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=2e-6, atol=2e-6)
    for (name, p), q in zip(ref.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
