"""Install the chunked linear + cross-entropy loss on Hugging Face causal LMs.

HF's causal-LM forward is, for every registered family with `fused_loss` (prac_dist.models.registry):

    hidden = self.model(...).last_hidden_state
    logits = self.lm_head(hidden)
    loss = self.loss_function(logits=logits, labels=labels, vocab_size=..., **kwargs)

Three small pieces turn that into the fused loss without copying any model code:
  1. a forward pre-hook on the model sees `labels` (and HF's `shift_labels`,
     `num_items_in_batch`, `ignore_index` kwargs) and marks the call as fused;
  2. `lm_head.forward` (an instance attribute, so the Parameter and any
     ZeRO-3 / FSDP2 module hooks stay as they are) then returns the loss itself,
     computed by `linear_cross_entropy` inside the head module's own call:
     ZeRO-3 gathers the weight for it and re-gathers it before backward
     through the hook on the module's output;
  3. `model.loss_function` passes that loss through, and a forward hook drops
     the (never computed) logits from the output: `out.logits is None`.
Without labels, or with gradients disabled (evaluation, where HF Trainer wants
the logits for metrics), the model runs exactly as before.
"""

from __future__ import annotations

import inspect
import types
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from prac_dist.models.registry import ARCHITECTURES

from .linear_cross_entropy import check_backward, linear_cross_entropy

__all__ = ["install_fused_loss", "uninstall_fused_loss", "is_fused_loss_installed"]

# Causal LMs whose forward is exactly "lm_head(hidden) then self.loss_function(logits, labels, ...)":
# the registry's word (Architecture.fused_loss), so a registered family cannot miss the fused loss.
_SUPPORTED = tuple(a.causal_lm for a in ARCHITECTURES.values() if a.fused_loss)
_ATTR = "_prac_fused_loss"


class _FusedHead:
    """Per-model state shared by the hooks, the head's forward and the loss pass-through."""

    def __init__(self, model: nn.Module, head: nn.Linear, chunk_size: Optional[int], backward: str):
        self.head = head
        self.chunk_size = chunk_size
        self.backward = backward
        self.signature = inspect.signature(type(model).forward)
        self.pending: Optional[Dict[str, Any]] = None
        self.loss: Optional[torch.Tensor] = None
        self.fused = False
        self.had_loss_function = "_loss_function" in vars(model)
        self.old_loss_function = vars(model).get("_loss_function")
        self.had_head_forward = "forward" in vars(head)
        self.old_head_forward = vars(head).get("forward")
        self.original_loss = model.loss_function
        self.handles = []

    # 1. model pre-hook: decide whether this call is fused.
    def pre_hook(self, model, args, kwargs):
        self.pending, self.loss, self.fused = None, None, False
        bound = self.signature.bind_partial(model, *args, **kwargs).arguments
        extra = bound.get("kwargs", {})  # the **kwargs of forward (HF's TransformersKwargs)
        labels = bound.get("labels")
        keep = bound.get("logits_to_keep", 0)
        if labels is None or not torch.is_grad_enabled() or not (isinstance(keep, int) and keep == 0):
            return None
        self.pending = {
            "labels": labels,
            "shift_labels": extra.get("shift_labels"),
            "num_items_in_batch": extra.get("num_items_in_batch"),
            "ignore_index": extra.get("ignore_index", -100),
        }
        return None

    # 2. lm_head.forward: the loss instead of the logits on a fused call.
    def head_forward(self, hidden: torch.Tensor) -> torch.Tensor:
        pending, self.pending = self.pending, None  # consume: a second head call is a plain one
        if pending is None:
            return self._plain_forward(hidden)
        ignore_index = pending["ignore_index"]
        shift = pending["shift_labels"]
        if shift is None:  # HF's shift: position t predicts label t+1, the last one predicts nothing
            shift = F.pad(pending["labels"], (0, 1), value=ignore_index)[..., 1:]
        self.loss = linear_cross_entropy(
            hidden,
            self.head.weight,
            shift.to(hidden.device),
            self.head.bias,
            ignore_index=ignore_index,
            num_items_in_batch=pending["num_items_in_batch"],
            chunk_size=self.chunk_size,
            backward=self.backward,
        )
        self.fused = True
        return self.loss

    def _plain_forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.had_head_forward:
            return self.old_head_forward(hidden)
        return type(self.head).forward(self.head, hidden)

    # 3a. model.loss_function: pass the fused loss through, else HF's own loss.
    def loss_function(self, logits=None, labels=None, vocab_size=None, **kwargs):
        # ZeRO-3 re-wraps module outputs for its backward hooks, so identity with self.loss can fail; a
        # 0-dim "logits" can only be the fused head's loss. Return the wrapped tensor so the hook fires.
        if self.loss is not None and logits is not None and logits.dim() == 0:
            return logits
        return self.original_loss(logits, labels, vocab_size, **kwargs)

    # 3b. model post-hook: the head returned a loss, not logits -- do not hand it out as logits.
    def post_hook(self, model, args, kwargs, output):
        fused, self.pending, self.loss, self.fused = self.fused, None, None, False
        if not fused:
            return None
        if isinstance(output, tuple):  # return_dict=False: HF's tuples omit None fields
            return (output[0],) + tuple(output[2:])
        fields = {k: v for k, v in output.items() if k != "logits"}
        return type(output)(**fields)


def _find_head(model: nn.Module) -> Optional[nn.Linear]:
    if not any(cls.__name__ in _SUPPORTED for cls in type(model).__mro__):
        return None
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Linear):
        return None
    try:
        from transformers.loss.loss_utils import ForCausalLMLoss
    except ImportError:  # pragma: no cover - transformers is required for the models above
        return None
    # A user-set loss function (or a non-causal loss_type) is not ours to replace.
    if model.loss_function is not ForCausalLMLoss:
        return None
    return head


def install_fused_loss(model: nn.Module, chunk_size: Optional[int] = None, backward: str = "auto") -> bool:
    """Make `model(..., labels=...)` compute its loss with the chunked linear + cross-entropy.

    Returns True when installed (or already installed), False when not applicable
    (not a registered causal LM with `fused_loss` (prac_dist.models.registry) or a subclass;
    head not an nn.Linear; a custom loss function).
    The loss equals HF's to float32 rounding; on a fused call `out.logits` is None.
    backward: 'auto', 'store' or 'recompute' (see `linear_cross_entropy`); installing again on an
    installed model sets the new chunk_size and backward.
    Call before `deepspeed.initialize` / `fully_shard`, like `apply_prac`.
    """
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"chunk_size={chunk_size!r}: accepted is None or an integer >= 1")
    check_backward(backward)
    installed = getattr(model, _ATTR, None)
    if installed is not None:
        installed.chunk_size, installed.backward = chunk_size, backward
        return True
    head = _find_head(model)
    if head is None:
        return False
    state = _FusedHead(model, head, chunk_size, backward)
    head.forward = types.MethodType(lambda _self, hidden: state.head_forward(hidden), head)
    model.loss_function = state.loss_function  # PreTrainedModel's setter stores it as _loss_function
    state.handles = [
        model.register_forward_pre_hook(state.pre_hook, with_kwargs=True),
        model.register_forward_hook(state.post_hook, with_kwargs=True, always_call=True),
    ]
    setattr(model, _ATTR, state)
    return True


def uninstall_fused_loss(model: nn.Module) -> None:
    """Undo `install_fused_loss` (a no-op when it is not installed)."""
    state = getattr(model, _ATTR, None)
    if state is None:
        return
    for handle in state.handles:
        handle.remove()
    if state.had_head_forward:
        state.head.forward = state.old_head_forward
    else:
        del state.head.forward
    if state.had_loss_function:
        model._loss_function = state.old_loss_function
    else:
        del model._loss_function
    delattr(model, _ATTR)


def is_fused_loss_installed(model: nn.Module) -> bool:
    return getattr(model, _ATTR, None) is not None
