"""PRACConfig: the typed, validated settings of PRAC compression.

Every way of switching PRAC on (Python, the DeepSpeed JSON "prac" section, the
`prac:` section of a prac-train YAML) goes through `PRACConfig.from_dict`, so a
misspelled key or a wrong type is an error naming it, never a silent default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple

__all__ = ["PRACConfig"]

_KERNELS = ("auto", "triton", "torch")
_STORAGE_BITS = (16, 8)
_SOLVERS = ("exact", "randomized")
_ADAPTIVE = ("off", "min_variance", "energy", "global")


@dataclass(frozen=True)
class PRACConfig:
    principal_ratio: float = 0.3
    """r1 = floor(principal_ratio * n) top singular directions of a linear layer's input."""
    random_ratio: float = 0.3
    """r2 = floor(random_ratio * n) random directions of the orthogonal complement."""
    nonlinear_principal_ratio: float = 0.2
    """r1 for the saved inputs of norm and SwiGLU/GELU layers (paper: 0.2)."""
    nonlinear_random_ratio: float = 0.2
    """r2 for the saved inputs of norm and SwiGLU/GELU layers (paper: 0.2)."""
    compress_nonlinear: bool = True
    """Also compress the tensors norm and activation layers save (the paper's setting)."""
    principal_update_interval: int = 500
    """T1: optimizer steps between recomputations of Q1 from the current batch."""
    random_update_interval: int = 500
    """T2: optimizer steps between redraws of Q2."""
    nonlinear_principal_update_interval: int = 1
    """T1 of the norm/SwiGLU/GELU compressors. Their error enters dX, not only dW, and a Q1 from an older
    batch left enough energy in the c-amplified random part to diverge a 128-wide LLaMA (val loss 8.02 vs
    4.71 baseline at T1=500; 4.70 at T1=1, benchmarks/nonlinear_refresh.py). Each refresh also redraws Q2."""
    nonlinear_principal_solver: str = "randomized"
    """Solver of those refreshes: 'randomized' (warm-started subspace iteration, a few matmuls) or 'exact'."""
    target_modules: Optional[Tuple[str, ...]] = None
    """Linear module names (last name component) to compress; None = the architecture table."""
    seed: int = 0
    """Base seed of the random subspaces (combined with the layer name and the rank)."""
    per_rank_random: bool = True
    """Independent Q2 on each data-parallel rank: averaging W unbiased estimates divides the variance by W."""
    storage_bits: int = 16
    """16: store Z in the activation dtype; 8: int8 with per-row scales and stochastic rounding (still unbiased)."""
    kernel: str = "auto"
    """'auto' (Triton on CUDA, PyTorch elsewhere), 'triton' or 'torch'."""
    principal_solver: str = "exact"
    """'exact' (eigendecomposition of XᵀX in float32) or 'randomized' (subspace iteration warm-started from Q1)."""
    fused_loss: bool = True
    """Install a chunked linear + cross-entropy head on causal LMs so the logits are never saved."""
    adaptive_rank: str = "off"
    """'off': fixed r1, r2. 'min_variance': at each principal refresh choose r1 per layer (r1 + r2 fixed,
    so stored bytes are those of the ratios) minimising PRAC's variance bound (c - 1)‖X - XQ1Q1ᵀ‖²
    over the measured spectrum. 'energy': the smallest r1 capturing adaptive_energy of ‖X‖², capped
    so that r2 >= 1. 'global': also moves r1 + r2 between the linear layers' bases, keeping their total
    (hence the stored bytes of the ratios): after each scheduled principal refresh the total goes where
    it lowers the summed relative variance bound most, and the bases whose size changed are refreshed
    at the next step; within a layer, r1 as in 'min_variance'. All keep r2 >= 1 (unbiased) and use the
    exact eigendecomposition."""
    adaptive_energy: float = 0.9
    """Target share of ‖X‖²_F for adaptive_rank='energy'."""

    def __post_init__(self) -> None:
        # Normalise a list of names to a tuple so the dataclass stays hashable.
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), where="PRACConfig")
        for name in ("principal_ratio", "random_ratio", "nonlinear_principal_ratio", "nonlinear_random_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"PRACConfig.{name}={value!r} is out of range: accepted is a number in [0, 1]")
        for prefix in ("", "nonlinear_"):
            total = getattr(self, prefix + "principal_ratio") + getattr(self, prefix + "random_ratio")
            if total > 1.0 + 1e-9:
                raise ValueError(
                    f"PRACConfig.{prefix}principal_ratio + {prefix}random_ratio = {total:g} > 1: "
                    f"r1 + r2 cannot exceed the layer width n"
                )
            if total == 0.0:
                raise ValueError(
                    f"PRACConfig.{prefix}principal_ratio and {prefix}random_ratio are both 0: "
                    f"nothing would be stored for the weight gradient; accepted is a sum in (0, 1]"
                )
        for name in ("principal_update_interval", "random_update_interval", "nonlinear_principal_update_interval"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"PRACConfig.{name}={value!r}: accepted is an integer >= 1 (optimizer steps)")
        if self.kernel not in _KERNELS:
            raise ValueError(f"PRACConfig.kernel={self.kernel!r}: accepted is one of {list(_KERNELS)}")
        if self.storage_bits not in _STORAGE_BITS:
            raise ValueError(f"PRACConfig.storage_bits={self.storage_bits!r}: accepted is one of {list(_STORAGE_BITS)}")
        for name in ("principal_solver", "nonlinear_principal_solver"):
            if getattr(self, name) not in _SOLVERS:
                raise ValueError(f"PRACConfig.{name}={getattr(self, name)!r}: accepted is one of {list(_SOLVERS)}")
        if self.adaptive_rank not in _ADAPTIVE:
            raise ValueError(f"PRACConfig.adaptive_rank={self.adaptive_rank!r}: accepted is one of {list(_ADAPTIVE)}")
        if not 0.0 < self.adaptive_energy <= 1.0:
            raise ValueError(f"PRACConfig.adaptive_energy={self.adaptive_energy!r}: accepted is a number in (0, 1]")
        if self.adaptive_rank != "off" and self.principal_solver != "exact":
            raise ValueError(f"PRACConfig.adaptive_rank={self.adaptive_rank!r} needs the whole spectrum: "
                             f"accepted principal_solver is 'exact' (got {self.principal_solver!r})")
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("PRACConfig.target_modules=[]: accepted is None (architecture table) or a non-empty list")

    @classmethod
    def field_names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "prac") -> "PRACConfig":
        """Build from a mapping (JSON/YAML section); `where` names the section in errors."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a mapping of PRACConfig fields, got {type(data).__name__}")
        known = cls.field_names()
        for key, value in data.items():
            if key not in known:
                raise ValueError(f"{where}.{key}: unknown key; accepted keys are {sorted(known)}")
            if isinstance(value, str) and value == "auto" and key != "kernel":
                raise ValueError(
                    f"{where}.{key}='auto': 'auto' is not accepted here; give an explicit value "
                    f"(prac_dist resolves no 'auto' values, and Accelerate rejects ones it does not know)"
                )
            _check_type(key, value, where=where)
        return cls(**dict(data))

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if out["target_modules"] is not None:
            out["target_modules"] = list(out["target_modules"])
        return out

    def ranks(self, n: int, nonlinear: bool = False) -> Tuple[int, int]:
        """(r1, r2) for a layer of input width n."""
        p = self.nonlinear_principal_ratio if nonlinear else self.principal_ratio
        r = self.nonlinear_random_ratio if nonlinear else self.random_ratio
        # The small epsilon keeps floor(0.3 * 10) = 3, not 2, after float rounding.
        return int(p * n + 1e-9), int(r * n + 1e-9)


_FLOAT_FIELDS = {"principal_ratio", "random_ratio", "nonlinear_principal_ratio", "nonlinear_random_ratio",
                 "adaptive_energy"}
_INT_FIELDS = {"principal_update_interval", "random_update_interval", "nonlinear_principal_update_interval", "seed",
               "storage_bits"}
_BOOL_FIELDS = {"compress_nonlinear", "per_rank_random", "fused_loss"}
_STR_FIELDS = {"kernel", "principal_solver", "nonlinear_principal_solver", "adaptive_rank"}


def _check_type(name: str, value: Any, where: str) -> None:
    # bool is a subclass of int in Python: reject it explicitly for numeric fields.
    if name in _FLOAT_FIELDS:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        expected = "a number"
    elif name in _INT_FIELDS:
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    elif name in _BOOL_FIELDS:
        ok = isinstance(value, bool)
        expected = "true or false"
    elif name in _STR_FIELDS:
        ok = isinstance(value, str)
        expected = "a string"
    elif name == "target_modules":
        ok = value is None or (
            isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value)
        )
        expected = "null or a list of module names"
    else:  # pragma: no cover - every field is listed above
        raise AssertionError(f"untyped PRACConfig field {name}")
    if not ok:
        hint = ""
        if name in _STR_FIELDS and isinstance(value, bool):
            # YAML 1.1 reads an unquoted off/on/no/yes as a boolean before we ever see the word.
            hint = f' (YAML turns an unquoted off/on/no/yes into {value}: quote the word, e.g. {name}: "off")'
        raise ValueError(f"{where}.{name}={value!r} has the wrong type ({type(value).__name__}): "
                         f"accepted is {expected}{hint}")
