"""Drop-in modules that reuse the original Parameter objects (state_dict keys unchanged)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from prac_dist.core.linear import prac_linear
from prac_dist.core.subspace import Compressor
from prac_dist.ops.activation import lean_gelu, lean_swiglu
from prac_dist.ops.norm import lean_layer_norm, lean_rms_norm

__all__ = ["PRACLinear", "PRACRMSNorm", "PRACLayerNorm", "PRACSwiGLUMLP", "PRACGELU", "linear_shape"]


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
    def __init__(self, original: nn.Module, comp: Optional[Compressor], kernel: str = "auto"):
        super().__init__()
        self._remember(original)
        self.weight = original.weight
        self.eps = float(getattr(original, "variance_epsilon", getattr(original, "eps", 1e-6)))
        self.kernel = kernel
        self.__dict__["prac_compressor"] = comp

    def forward(self, x):
        return lean_rms_norm(x, self.weight, self.eps, self.prac_compressor, self.kernel)


class PRACLayerNorm(_Swapped):
    def __init__(self, original: nn.LayerNorm, comp: Optional[Compressor]):
        super().__init__()
        self._remember(original)
        self.weight, self.bias, self.eps = original.weight, original.bias, original.eps
        self.__dict__["prac_compressor"] = comp

    def forward(self, x):
        return lean_layer_norm(x, self.weight, self.bias, self.eps, self.prac_compressor)


class PRACSwiGLUMLP(_Swapped):
    """down(silu(gate(x)) * up(x)) with the lean SwiGLU; gate/up/down are the original children."""

    def __init__(self, original: nn.Module, comp_g: Optional[Compressor], comp_u: Optional[Compressor],
                 kernel: str = "auto"):
        super().__init__()
        self._remember(original)
        self.gate_proj, self.up_proj, self.down_proj = original.gate_proj, original.up_proj, original.down_proj
        self.kernel = kernel
        self.__dict__["prac_compressors"] = (comp_g, comp_u)

    def forward(self, x):
        comp_g, comp_u = self.prac_compressors
        return self.down_proj(lean_swiglu(self.gate_proj(x), self.up_proj(x), comp_g, comp_u, self.kernel))


class PRACGELU(_Swapped):
    def __init__(self, original: nn.Module, approximate: str, comp: Optional[Compressor]):
        super().__init__()
        self._remember(original)
        self.approximate = approximate
        self.__dict__["prac_compressor"] = comp

    def forward(self, x):
        return lean_gelu(x, self.approximate, self.prac_compressor)
