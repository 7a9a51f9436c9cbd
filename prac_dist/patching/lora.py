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
(one Z per copy), no longer shared.

The A module is kept (same object, same Parameter, so ZeRO-3 / FSDP2 hooks on it stay);
only its `forward` is replaced by an instance attribute, which `remove_prac` deletes.
Layers PEFT wrapped after apply_prac are found at the next training forward.
"""

from __future__ import annotations

import warnings
from typing import List

from torch import nn

from prac_dist.core.linear import prac_linear
from prac_dist.core.subspace import Compressor
from prac_dist.patching.modules import PRACLinear
from prac_dist.patching.wrappers import base_layer

__all__ = ["compress_lora_inputs", "LoRAInputForward"]


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
    for parent, attr, _ in swaps:
        layer = getattr(parent, attr)
        if "base_layer" not in layer.__dict__["_modules"]:
            continue  # not wrapped by PEFT: nothing to do (the common, fast path)
        prac = base_layer(layer)
        if not isinstance(prac, PRACLinear):
            continue
        _adopt(layer, prac, handles, warned)


def _adopt(layer: nn.Module, prac: PRACLinear, handles: List, warned: set) -> None:
    lora_a = layer.__dict__["_modules"].get("lora_A")
    if lora_a is None:
        return
    if prac.transposed and not getattr(layer, "fan_in_fan_out", True):
        # PEFT saw an nn.Linear, but the weight is GPT-2's Conv1D (in, out): merges must transpose.
        layer.fan_in_fan_out = True
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
