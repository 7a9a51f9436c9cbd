"""Drop-in modules that reuse the original Parameter objects (state_dict keys unchanged)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from prac_dist.core.linear import prac_linear
from prac_dist.core.subspace import Compressor
from prac_dist.ops.gelu import lean_gelu
from prac_dist.ops.layernorm import lean_layer_norm
from prac_dist.ops.rmsnorm import lean_rms_norm
from prac_dist.ops.swiglu import lean_swiglu
from prac_dist.ops.gelu_linear import gelu_linear

__all__ = ["PRACLinear", "PRACRMSNorm", "PRACLayerNorm", "PRACSwiGLUMLP", "PRACGELU", "PRACGELUMLP", "linear_shape",
           "is_linear", "is_conv1d"]


def is_conv1d(m: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2): a linear layer whose weight is stored (in, out)."""
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf")


def is_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or is_conv1d(m)


def linear_shape(module: nn.Module, transposed: bool):
    """(in_features, out_features) without reading weight.shape: under ZeRO-3 zero.Init it is empty."""
    if hasattr(module, "in_features"):  # nn.Linear, PRACLinear
        return int(module.in_features), int(module.out_features)
    if transposed:  # transformers Conv1D(nf, nx): weight is (nx, nf) = (in, out)
        return int(module.nx), int(module.nf)
    shape = getattr(module.weight, "ds_shape", module.weight.shape)
    return int(shape[1]), int(shape[0])


class _Swapped(nn.Module):
    """Base: remembers the module it replaced without registering it (so no duplicate state_dict keys)."""

    def _remember(self, original: nn.Module) -> None:
        self.__dict__["_prac_original"] = original


class PRACLinear(_Swapped, nn.Linear):
    """An nn.Linear to libraries that dispatch on it (PEFT wraps it in a LoRA layer; see patching/lora.py).

    nn.Linear.__init__ is skipped: it would allocate and initialise a second weight.
    """

    def __init__(self, original: nn.Module, comp: Compressor, transposed: bool = False):
        nn.Module.__init__(self)
        self._remember(original)
        self.in_features, self.out_features = linear_shape(original, transposed)
        self.transposed = transposed
        self.weight = original.weight
        self.bias = original.bias if getattr(original, "bias", None) is not None else None
        self.__dict__["prac_compressor"] = comp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return prac_linear(x, self.weight, self.bias, self.prac_compressor, self.transposed)

    def extra_repr(self) -> str:
        c = self.prac_compressor
        return f"in={self.in_features}, out={self.out_features}, r1={c.r1}, r2={c.r2}, group={c.name}"


class PRACRMSNorm(_Swapped):
    """y = w · x̂, or (offset + w) · x̂ for Gemma's RMSNorm (offset 1, the sum taken in float32 as Gemma does)."""

    def __init__(self, original: nn.Module, comp: Optional[Compressor], kernel: str = "auto", offset: float = 0.0,
                 eps: Optional[float] = None):
        super().__init__()
        self._remember(original)
        self.weight = original.weight
        if eps is None:
            eps = getattr(original, "variance_epsilon", getattr(original, "eps", 1e-6))
        self.eps = float(eps)
        self.kernel = kernel
        self.offset = float(offset)
        self.__dict__["prac_compressor"] = comp

    def forward(self, x):
        if not self.offset:
            return lean_rms_norm(x, self.weight, self.eps, self.prac_compressor, self.kernel)
        weight = self.weight.float() + self.offset  # d values; autograd passes dw through the sum unchanged
        return lean_rms_norm(x, weight, self.eps, self.prac_compressor, self.kernel).to(x.dtype)


class PRACLayerNorm(_Swapped):
    def __init__(self, original: nn.LayerNorm, comp: Optional[Compressor]):
        super().__init__()
        self._remember(original)
        self.weight, self.bias, self.eps = original.weight, original.bias, original.eps
        self.__dict__["prac_compressor"] = comp

    def forward(self, x):
        return lean_layer_norm(x, self.weight, self.bias, self.eps, self.prac_compressor)


class PRACSwiGLUMLP(_Swapped):
    """down(silu(gate(x)) * up(x)) with the lean SwiGLU; gate/up/down are the original children, kept
    under their own names. names = (gate, up, down); gate == up is one fused linear whose output halves
    are gate and up in that order (Phi-3's gate_up_proj), or up and gate with up_first."""

    def __init__(self, original: nn.Module, comp_g: Optional[Compressor], comp_u: Optional[Compressor],
                 kernel: str = "auto", names=("gate_proj", "up_proj", "down_proj"), up_first: bool = False):
        super().__init__()
        self._remember(original)
        for name in dict.fromkeys(names):
            setattr(self, name, getattr(original, name))
        self.names, self.up_first = tuple(names), up_first
        self.kernel = kernel
        self.__dict__["prac_compressors"] = (comp_g, comp_u)

    def forward(self, x):
        comp_g, comp_u = self.prac_compressors
        gate, up, down = (getattr(self, n) for n in self.names)
        if gate is up:
            g, u = gate(x).chunk(2, dim=-1)
            if self.up_first:
                g, u = u, g
        else:
            g, u = gate(x), up(x)
        return down(lean_swiglu(g, u, comp_g, comp_u, self.kernel))


class PRACGELU(_Swapped):
    def __init__(self, original: nn.Module, approximate: str, comp: Optional[Compressor]):
        super().__init__()
        self._remember(original)
        self.approximate = approximate
        self.__dict__["prac_compressor"] = comp

    def forward(self, x):
        return lean_gelu(x, self.approximate, self.prac_compressor)


class PRACGELUMLP(_Swapped):
    """down(gelu(up(x))) whose down projection stores nothing: see prac_dist.ops.gelu_linear.
    names = (up, act, down), the original children, kept under their own names; comp: an int8 compressor
    of h (the GELU's input) or None to keep h exactly."""

    def __init__(self, original: nn.Module, names, approximate: str, comp: Optional[Compressor] = None):
        super().__init__()
        self._remember(original)
        for name in names:
            setattr(self, name, getattr(original, name))
        self.names, self.approximate = tuple(names), approximate
        self.__dict__["prac_compressor"] = comp

    def forward(self, x):
        up, _, down = (getattr(self, n) for n in self.names)
        if "base_layer" in down.__dict__["_modules"]:  # PEFT wrapped down after the swap: its LoRA path must run
            return down(lean_gelu(up(x), self.approximate, self.prac_compressor))
        return gelu_linear(up(x), self.approximate, down.weight, down.bias, is_conv1d(down), self.prac_compressor)
