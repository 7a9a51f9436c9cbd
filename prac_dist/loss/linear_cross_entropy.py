"""Chunked linear + cross-entropy: the LM-head loss without the N x vocab logits.

The standard head computes logits = hidden @ W^T (N x V, cast to float32) and
cross_entropy saves the float32 log-softmax for backward: N x V x 4 bytes, e.g.
1024 tokens x 32000 vocab = 131 MB, about 3.5 LLaMA-130M decoder layers' worth.

Two ways to get the gradients, `backward=` "recompute" or "store" ("auto" picks by bytes):

"recompute" walks the tokens in chunks of `chunk_size` rows. Forward keeps,
per row, only the float32 logsumexp; backward recomputes each chunk's logits
and turns them into the gradient on the spot. Saved for backward:
  * the hidden states (N x d, the compute dtype: what nn.Linear saves anyway),
  * the weight Parameter itself (never a view or cast: ZeRO-3 and FSDP2
    re-gather the storage in place before backward),
  * labels (N int64) and logsumexp (N float32).
It costs one extra head matmul: 4 per step instead of 3 (1.33x the head's
FLOPs, +2·N·d·V: +101 GFLOP for 2,048 tokens at d 768, vocabulary 32,000).

"store" (Liger-Kernel's fused linear cross-entropy, written here from its
description) turns each chunk's logits into its gradient already in forward and
keeps the finished dX (N x d, the hidden dtype), a float32 dW (V x d) and db (V):
3 head matmuls, as the unfused head. Backward only scales them by the incoming
gradient (in place: a second backward through the same graph is an autograd error).
The float32 dW is the accumulator "recompute" allocates at the start of its
backward anyway; "store" holds it from the head's forward to its backward
instead, which costs memory only when something runs in between (more forwards
before the backward, a forward whose backward never comes). "auto" takes "store"
when its buffers (N·d·s + 4·V·d [+ 4·V]) are at most the float32 logits the
chunking avoids (4·N·V), i.e. roughly when the micro-batch has more tokens than
d: LLaMA-130M (bf16) at 2,048 tokens stores 97 MiB where the logits would be 250 MiB.

Numerics follow Hugging Face exactly: the matmul runs in the compute dtype
(the autocast dtype under autocast, else the hidden dtype) and its result is
upcast to float32 before any softmax arithmetic, so the logits are the same
numbers HF's `logits.float()` holds. In backward the float32 gradient of the
logits is cast to the compute dtype before the two matmuls, as HF's graph does.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

__all__ = ["linear_cross_entropy", "auto_chunk_size", "store_fits", "check_backward", "BACKWARDS"]

BACKWARDS = ("auto", "recompute", "store")

# Chunk logits are at most this many float32 bytes (64 MiB = 524 rows at a
# 32000 vocabulary, 128 rows at 128256): small next to the N x V x 4 bytes it
# replaces, large enough that each chunk's matmul (rows x d x V) stays efficient.
_CHUNK_BYTES = 64 * 2**20


def check_backward(backward: str) -> None:
    if backward not in BACKWARDS:
        raise ValueError(f"backward={backward!r}: accepted is one of {list(BACKWARDS)}")


def auto_chunk_size(num_tokens: int, vocab_size: int) -> int:
    """Rows per chunk: float32 chunk logits of at most 64 MiB, at least 1 row, at most all tokens."""
    return max(1, min(num_tokens, _CHUNK_BYTES // (4 * vocab_size)))


def store_fits(num_tokens: int, d: int, vocab: int, hidden_bytes: int, bias: bool) -> bool:
    """True when backward='store' keeps no more bytes than the float32 logits (4·N·V) it also avoids.

    Its buffers: dX (N·d in the hidden dtype, `hidden_bytes` per element), float32 dW (4·V·d) and db (4·V).
    """
    stored = num_tokens * d * hidden_bytes + 4 * vocab * d + (4 * vocab if bias else 0)
    return stored <= 4 * num_tokens * vocab


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    # Under autocast, F.linear casts its inputs to the autocast dtype: do the same.
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden.dtype


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    # Matmul in the compute dtype, then float32: the numbers of HF's logits.float().
    return F.linear(h, weight, bias).float()


def _logits_grad_(logits: torch.Tensor, lse: torch.Tensor, safe: torch.Tensor, row_scale: torch.Tensor) -> torch.Tensor:
    # d(sum)/d(logits) = softmax - onehot, times row_scale (0 on ignored rows); in place on the logits.
    logits.sub_(lse[:, None]).exp_()
    logits.scatter_add_(1, safe[:, None], torch.full_like(lse[:, None], -1.0))
    return logits.mul_(row_scale[:, None])



def _accumulate_chunk(g_c, h, w, rows, grad_h, grad_w, grad_b) -> None:
    """One chunk's share of dX (its rows), dW and db (float32 sums), from its logits gradient g_c.

    Shared by the recompute backward and the store forward: both modes must do the same arithmetic.
    A gradient that is not needed is None and skipped.
    """
    if grad_h is not None:
        grad_h[rows] = g_c @ w
    if grad_w is not None:
        grad_w += (g_c.t() @ h[rows]).float()
    if grad_b is not None:
        grad_b += g_c.float().sum(0)

class _LinearCrossEntropySum(torch.autograd.Function):
    """Sum over rows with label != ignore_index of logsumexp(x W^T + b) - (x W^T + b)[label]."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index, chunk_size):
        cdtype = _compute_dtype(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden.to(cdtype)
            w = weight.to(cdtype)  # transient; the Parameter itself is what we save
            b = None if bias is None else bias.to(cdtype)
            valid = labels != ignore_index
            safe = torch.where(valid, labels, 0)
            lse = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            for start in range(0, h.shape[0], chunk_size):
                rows = slice(start, start + chunk_size)
                logits = _chunk_logits(h[rows], w, b)
                lse[rows] = torch.logsumexp(logits, dim=-1)
                target = logits.gather(1, safe[rows, None]).squeeze(1)
                total += torch.where(valid[rows], lse[rows] - target, 0.0).sum()
        ctx.save_for_backward(h, weight, bias, labels, lse)
        ctx.ignore_index = ignore_index
        ctx.chunk_size = chunk_size
        ctx.cdtype = cdtype
        ctx.hidden_dtype = hidden.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        h, weight, bias, labels, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        cdtype = ctx.cdtype
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(cdtype)
            b = None if bias is None else bias.to(cdtype)
            valid = labels != ctx.ignore_index
            safe = torch.where(valid, labels, 0)
            row_scale = valid.to(torch.float32) * grad_total.to(torch.float32)
            grad_h = torch.empty_like(h) if need_h else None
            # dW is accumulated over chunks in float32 (one rounding to the param
            # dtype at the end, like a single full-N matmul with float32 accumulation).
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_w else None
            grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=h.device) if need_b else None
            for start in range(0, h.shape[0], ctx.chunk_size):
                rows = slice(start, start + ctx.chunk_size)
                g = _logits_grad_(_chunk_logits(h[rows], w, b), lse[rows], safe[rows], row_scale[rows])
                # HF's graph casts the float32 logits gradient back to the compute dtype here.
                _accumulate_chunk(g.to(cdtype), h, w, rows, grad_h, grad_w, grad_b)
        return (
            None if grad_h is None else grad_h.to(ctx.hidden_dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            None,
            None,
            None,
        )


class _LinearCrossEntropyStore(torch.autograd.Function):
    """The same sum; its gradients computed chunk by chunk in forward and scaled in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index, chunk_size):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        cdtype = _compute_dtype(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden.to(cdtype)
            w = weight.to(cdtype)
            b = None if bias is None else bias.to(cdtype)
            valid = labels != ignore_index
            safe = torch.where(valid, labels, 0)
            row_scale = valid.to(torch.float32)
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            grad_h = torch.empty_like(h) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_w else None
            grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=h.device) if need_b else None
            for start in range(0, h.shape[0], chunk_size):
                rows = slice(start, start + chunk_size)
                logits = _chunk_logits(h[rows], w, b)
                lse = torch.logsumexp(logits, dim=-1)
                target = logits.gather(1, safe[rows, None]).squeeze(1)
                total += torch.where(valid[rows], lse - target, 0.0).sum()
                g_c = _logits_grad_(logits, lse, safe[rows], row_scale[rows]).to(cdtype)
                _accumulate_chunk(g_c, h, w, rows, grad_h, grad_w, grad_b)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        # In place: the buffers are this graph's alone; a second backward fails autograd's version check.
        grads = []
        for g, dtype in zip(ctx.saved_tensors, ctx.dtypes):
            grads.append(None if g is None else g.mul_(grad_total.to(g.dtype)).to(dtype))
        return (*grads, None, None, None)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch: Optional[Union[int, torch.Tensor]] = None,
    chunk_size: Optional[int] = None,
    backward: str = "auto",
) -> torch.Tensor:
    """Cross-entropy of `hidden @ weight.T + bias` against `labels`, never holding all logits.

    Equals `F.cross_entropy(F.linear(hidden, weight, bias).float().view(-1, V),
    labels.view(-1), ignore_index=ignore_index, reduction=reduction)` in value and in
    all gradients, to float32 rounding. No label shift here (see
    `prac_dist.loss.install_fused_loss` for HF's causal shift).

    hidden: (..., d); weight: (V, d); labels: (...) integer, same leading shape.
    reduction: 'mean' (over rows whose label != ignore_index; NaN when there is
    none, like PyTorch) or 'sum'. num_items_in_batch: if given, the sum divided by
    it (HF's gradient-accumulation normalisation); overrides `reduction`.
    chunk_size: rows per chunk; None -> `auto_chunk_size`.
    backward: 'recompute' (logits recomputed in backward: 4 head matmuls, saves hidden + logsumexp),
    'store' (gradients computed in forward: 3 matmuls, saves dX + float32 dW [+ db]) or 'auto'
    ('store' when `store_fits`, see the module docstring). Without grad, neither stores anything.
    """
    check_backward(backward)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r}: accepted is 'mean' or 'sum'")
    if weight.dim() != 2:
        raise ValueError(f"weight has shape {tuple(weight.shape)}: accepted is (vocab, hidden)")
    vocab, d = weight.shape
    if hidden.shape[-1] != d:
        raise ValueError(f"hidden has last dimension {hidden.shape[-1]}, weight expects {d}")
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels has shape {tuple(labels.shape)}: accepted is hidden's leading shape {tuple(hidden.shape[:-1])}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels has dtype {labels.dtype}: accepted is an integer dtype")
    if bias is not None and bias.shape != (vocab,):
        raise ValueError(f"bias has shape {tuple(bias.shape)}: accepted is ({vocab},)")
    h = hidden.reshape(-1, d)
    y = labels.reshape(-1).to(torch.int64)
    if chunk_size is None:
        chunk_size = auto_chunk_size(h.shape[0], vocab)
    elif not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r}: accepted is None or an integer >= 1")
    bad = (y != ignore_index) & ((y < 0) | (y >= vocab))
    accepted = f"accepted are 0..{vocab - 1} and ignore_index={ignore_index}"
    try:  # a device-side assert: no host sync on the training hot path (the CPU checks it at once)
        torch._assert_async(~bad.any(), f"labels contain a value outside the vocabulary: {accepted}")
    except RuntimeError:
        raise ValueError(f"labels contain {int(y[bad][0])}: {accepted}") from None
    if backward == "auto":
        backward = "store" if store_fits(h.shape[0], d, vocab, h.element_size(), bias is not None) else "recompute"
    wants_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (h, weight, bias))
    fn = _LinearCrossEntropyStore if backward == "store" and wants_grad else _LinearCrossEntropySum
    total = fn.apply(h, weight, bias, y, ignore_index, chunk_size)
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch
    if reduction == "sum":
        return total
    return total / (y != ignore_index).sum()
