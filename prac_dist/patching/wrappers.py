"""Seeing through the wrappers users put around a model: engines (`.module`) and PEFT.

- DeepSpeed's engine, DDP and Accelerate's wrappers keep the model at `.module`;
  torch.compile's OptimizedModule at `._orig_mod`.
- PEFT keeps it two levels down: `PeftModel.base_model` (a tuner such as `LoraModel`)
  `.model` (the Hugging Face model). apply_prac works on that inner model, whichever
  order the user chose, so the PRAC state, the fused loss and the forward hook all live
  on it. PEFT's `merge_and_unload()` / `unload()` take PRAC off first (patching/lora.py).
- A PEFT tuner layer (`lora.Linear`) wraps the original linear at `.base_layer`
  (possibly several deep). PRAC swaps the innermost one; the swap is recorded at the
  outer name (`self_attn.q_proj`), so undoing it finds the PRAC module wherever PEFT put it.
  PRAC's MLP module keeps the original MLP's linears as its children; LoRA layers PEFT put there
  after apply_prac move to the original MLP when remove_prac puts it back (keep_peft_layers).

Duck-typed: nothing here imports peft.
"""

from __future__ import annotations

from typing import Iterator, Tuple

from torch import nn

__all__ = ["unwrap_chain", "unwrap", "base_layer", "swap_site", "is_peft_wrapper", "keep_peft_layers"]

_MAX_DEPTH = 8  # engine(DDP(PeftModel(LoraModel(model)))) is 4; more means a cycle


def is_peft_wrapper(module: nn.Module) -> bool:
    return type(module).__module__.split(".", 1)[0] == "peft" and hasattr(module, "peft_config")


def _inner(module: nn.Module):
    if is_peft_wrapper(module):  # PeftModel -> tuner -> model
        return module.__dict__["_modules"].get("base_model") or module.__dict__["_modules"].get("model")
    children = module.__dict__["_modules"]
    inner = children.get("module", children.get("_orig_mod"))  # engines, DDP, torch.compile: a registered child
    return inner if isinstance(inner, nn.Module) else None


def unwrap_chain(model: nn.Module) -> Iterator[nn.Module]:
    """The model, then each module it wraps, outermost first."""
    for _ in range(_MAX_DEPTH):
        if model is None:
            return
        yield model
        model = _inner(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The innermost model: what apply_prac patches and where it keeps its state."""
    for model in unwrap_chain(model):
        pass
    return model


def base_layer(module: nn.Module) -> nn.Module:
    """The layer a PEFT tuner layer wraps (itself for any other module)."""
    for _ in range(_MAX_DEPTH):
        inner = module.__dict__["_modules"].get("base_layer")
        if inner is None:
            return module
        module = inner
    return module


def swap_site(parent: nn.Module, attr: str) -> Tuple[nn.Module, str]:
    """Where the module named `attr` of `parent` really sits: inside PEFT's base_layer chain if wrapped."""
    for _ in range(_MAX_DEPTH):
        child = getattr(parent, attr)
        if "base_layer" not in child.__dict__["_modules"]:
            return parent, attr
        parent, attr = child, "base_layer"
    return parent, attr


def _wraps(outer: nn.Module, inner: nn.Module) -> bool:
    for _ in range(_MAX_DEPTH):
        outer = outer.__dict__["_modules"].get("base_layer")
        if outer is None:
            return False
        if outer is inner:
            return True
    return False


def keep_peft_layers(patched: nn.Module, original: nn.Module) -> None:
    """Before `original` goes back in place of the PRAC module `patched` (which holds its children under
    the same names): PEFT layers wrapped around those children after apply_prac move to `original`."""
    for name, child in patched.__dict__["_modules"].items():
        kept = original.__dict__["_modules"].get(name)
        if kept is not None and child is not kept and _wraps(child, kept):
            setattr(original, name, child)
