"""PRAC inside PEFT LoRA layers: compress what the LoRA A matrix saves.

A LoRA layer computes Y = X Wᵀ + s · B A drop(X) with W frozen. Its backward needs
  dX  = dY W + s · (dY B) A            (no activation needed),
  dB  = s · dYᵀ (A X)                  (A X is N x r: small, kept exact),
  dA  = s · (Bᵀ dY)ᵀ X                 (X is N x n: the one large tensor it saves).
So the place for PRAC is A's input, not the frozen base layer (which saves no X: its
weight needs no gradient). With lora_dropout = 0 (PEFT's default) A reads the very
tensor X the base layer reads, so q/k/v's A matrices share one basis and one stored Z,
exactly as their W would without LoRA; dA = s·(Bᵀ dY)ᵀ Z [Q1 | Q2]ᵀ is unbiased, and
exact at full rank. With dropout each A reads its own dropped copy: still compressed
(one Z per copy), not shared.

The A module is kept (same object, same Parameter, so ZeRO-3 / FSDP2 hooks on it stay);
only its `forward` is replaced by an instance attribute, which `remove_prac` deletes.
Layers PEFT wrapped after apply_prac are found at the next training forward.

PEFT's `merge_and_unload()` / `unload()` return the inner model. On a PRAC-patched PeftModel they
first take PRAC off (UnloadGuard, an instance attribute of the tuner such as `LoraModel`; PEFT's
classes are untouched), so the model they return holds no PRAC module and no PRAC state, and its
merged weights are PEFT's own merge of the same Parameters.
"""

from __future__ import annotations

import warnings
from typing import List

from torch import nn

from prac_dist.core.linear import prac_linear
from prac_dist.core.subspace import Compressor
from prac_dist.patching.modules import PRACLinear
from prac_dist.patching.wrappers import base_layer

__all__ = ["compress_lora_inputs", "LoRAInputForward", "UnloadGuard", "match_orientation"]


class LoRAInputForward:
    """`lora_A[adapter].forward` with PRAC's saved Z; `remove()` gives the module its own forward back."""

    def __init__(self, module: nn.Linear, comp: Compressor):
        self.module, self.comp = module, comp

    def __call__(self, x):
        # In A's dtype, as PEFT's own input cast would (float32 adapters on a bf16 model): see _adopt.
        weight = self.module.weight
        return prac_linear(x, weight, self.module.bias, self.comp, dtype=weight.dtype)

    def remove(self) -> None:
        if self.module.__dict__.get("forward") is self:
            del self.module.__dict__["forward"]


class _CastBack:
    def __init__(self, layer: nn.Module):
        self.layer = layer

    def remove(self) -> None:
        self.layer.cast_input_dtype_enabled = True


def compress_lora_inputs(swaps, handles: List, warned: set) -> None:
    """Give every LoRA A matrix around a PRACLinear the PRACLinear's compressor (idempotent, cheap).

    swaps: apply_prac's (parent, name, original) records; handles: where undo handles go;
    warned: names already reported as left exact (a LoRA variant such as DoRA).
    """
    for layer, prac in _lora_layers(swaps):
        _adopt(layer, prac, handles, warned)


def _lora_layers(swaps):
    """(PEFT layer, the PRACLinear it wraps) for every swapped linear PEFT wrapped."""
    for parent, attr, _ in swaps:
        layer = getattr(parent, attr)
        if "base_layer" not in layer.__dict__["_modules"]:
            continue  # not wrapped by PEFT: nothing to do (the common, fast path)
        prac = base_layer(layer)
        if isinstance(prac, PRACLinear):
            yield layer, prac


def match_orientation(layer: nn.Module, prac: PRACLinear) -> None:
    if prac.transposed and not getattr(layer, "fan_in_fan_out", True):
        # PEFT saw an nn.Linear, but the weight is GPT-2's Conv1D (in, out): merges must transpose.
        layer.fan_in_fan_out = True


class UnloadGuard:
    """`tuner.merge_and_unload` / `tuner.unload`: run `undo` (remove_prac, which also removes this), then PEFT's own."""

    def __init__(self, tuner: nn.Module, name: str, swaps, undo):
        self.tuner, self.name, self.swaps, self.undo = tuner, name, swaps, undo

    def __call__(self, *args, **kwargs):
        for layer, prac in list(_lora_layers(self.swaps)):  # apply_prac before get_peft_model, no forward yet
            match_orientation(layer, prac)
        self.undo()  # PEFT then merges into the unpatched model: the same Parameters, plain PEFT's result
        return getattr(self.tuner, self.name)(*args, **kwargs)

    @classmethod
    def install(cls, tuner: nn.Module, swaps, undo, handles: List) -> None:
        for name in ("merge_and_unload", "unload"):
            if not isinstance(tuner.__dict__.get(name), cls):
                guard = cls(tuner, name, swaps, undo)
                setattr(tuner, name, guard)
                handles.append(guard)

    def remove(self) -> None:
        if self.tuner.__dict__.get(self.name) is self:
            del self.tuner.__dict__[self.name]


def _adopt(layer: nn.Module, prac: PRACLinear, handles: List, warned: set) -> None:
    match_orientation(layer, prac)
    lora_a = layer.__dict__["_modules"].get("lora_A")
    if lora_a is None:
        return
    variants = getattr(layer, "lora_variant", {})
    plain = {a: m for a, m in lora_a.items() if a not in variants and type(m) is nn.Linear}
    if len(plain) == len(lora_a) and getattr(layer, "cast_input_dtype_enabled", False):
        # PEFT casts X to A's dtype before A (float32 adapters on a bf16 model: one float32 copy of X per
        # layer, so q/k/v would each store their own). Let X through uncast: prac_linear casts inside,
        # after the shared Z is taken from the one X.
        layer.cast_input_dtype_enabled = False
        handles.append(_CastBack(layer))
    for adapter, module in lora_a.items():
        if isinstance(module.__dict__.get("forward"), LoRAInputForward):
            continue
        if adapter not in plain:
            key = f"{prac.prac_compressor.name}:{adapter}"
            if key not in warned:
                warned.add(key)
                warnings.warn(f"PRAC: LoRA adapter {adapter!r} of {prac.prac_compressor.name} is a "
                              f"{type(variants.get(adapter, module)).__name__}; its input stays exact "
                              f"(PRAC compresses plain LoRA A matrices only)", stacklevel=4)
            continue
        hook = LoRAInputForward(module, prac.prac_compressor)
        module.forward = hook
        handles.append(hook)
