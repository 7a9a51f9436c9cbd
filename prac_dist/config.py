"""PRACConfig: the typed, validated settings of PRAC compression.

Every way of switching PRAC on (Python, the DeepSpeed JSON "prac" section, the
`prac:` section of a prac-train YAML) goes through `PRACConfig.from_dict`, so a
misspelled key or a wrong type is an error naming it, never a silent default.
Types and accepted values come from the field annotations (prac_dist/validate.py):
a new field needs no validation code unless it has a range.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional, Tuple, Union

from prac_dist.validate import ConfigError, build, check_fields

__all__ = ["PRACConfig"]


def fused_loss_backward(fused_loss) -> Optional[str]:
    """The fused head's `backward=` mode for a `fused_loss` setting: None when off, 'auto' for True."""
    if fused_loss is False:
        return None
    return "auto" if fused_loss is True else fused_loss


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
    principal_schedule: Literal["interval", "early_dense", "drift"] = "interval"
    """When the linear layers' compressors recompute Q1: 'interval' every principal_update_interval steps;
    'early_dense' also at steps 1, 2, 4, 8, ... below it (log2(T1) extra refreshes, while the weights move
    the activations' principal subspace fastest; the schedule nonlinear_principal_schedule also offers);
    'drift' also whenever a batch's captured share ‖XQ1‖²/‖X‖² (from the X·Q1 the projection computes)
    falls below principal_drift times the share at the last refresh: one host read per optimizer step."""
    principal_drift: float = 0.9
    """principal_schedule='drift': the captured share, relative to the last refresh's, that triggers one."""
    nonlinear_principal_update_interval: int = 1
    """T1 of the norm/SwiGLU/GELU compressors. Their error enters dX, not only dW, and a Q1 from another batch
    leaves energy in the c-amplified random part: on a 64-wide LLaMA the validation loss ended +0.19%/+0.58%
    above the baseline re-solved every step, +0.25%/+0.35% every 2, +1.47%/+1.02% every 4 (300 steps, 2 seeds,
    benchmarks/results/nonlinear_refresh.json). Each refresh also redraws Q2."""
    nonlinear_principal_schedule: Literal["interval", "early_dense"] = "interval"
    """When the norm/SwiGLU/GELU compressors recompute Q1: 'interval' every nonlinear_principal_update_interval
    steps; 'early_dense' also at steps 1, 2, 4, 8, ... below it (the first steps move the activations most)."""
    nonlinear_principal_solver: Literal["exact", "randomized"] = "randomized"
    """Solver of those refreshes: 'randomized' (warm-started subspace iteration, a few matmuls) or 'exact'."""
    target_modules: Optional[Tuple[str, ...]] = None
    """Linear module names (last name component) to compress; None = the architecture table."""
    seed: int = 0
    """Base seed of the random subspaces (combined with the layer name and the rank)."""
    per_rank_random: bool = True
    """Independent Q2 on each data-parallel rank: averaging W unbiased estimates divides the variance by W."""
    storage_bits: Literal[16, 8] = 8
    """Bits of a projected Z: 16 stores it in the activation dtype; 8 (default) in int8 with per-row scales and
    stochastic rounding, still unbiased: r + 4 bytes per token instead of 2r, +0.16% final val loss in training
    (benchmarks/results/storage_bits.json). With 16, PRACConfig() keeps 0.453 of the decoder's saved bytes on
    the LLaMA-130M layer shape, with 8 0.427 (benchmarks/results/compute.json): 8 is what brings it under 0.45."""
    kernel: Literal["auto", "triton", "torch"] = "auto"
    """'auto' (Triton on CUDA, PyTorch elsewhere), 'triton' or 'torch'."""
    principal_solver: Literal["exact", "randomized"] = "exact"
    """'exact' (eigendecomposition of XᵀX in float32) or 'randomized' (subspace iteration warm-started from Q1)."""
    fused_loss: Union[bool, Literal["auto", "store", "recompute"]] = True
    """Install a chunked linear + cross-entropy head on causal LMs so the logits are never saved, and how it
    gets its gradients: 'store' (computed in forward, kept until backward: the head's 3 matmuls), 'recompute'
    (logits recomputed in backward: 4 matmuls, keeps only the hidden states + logsumexp), 'auto' (store when
    its dX + float32 dW are at most the float32 logits, prac_dist.loss.linear_cross_entropy.store_fits). true = 'auto';
    false = HF's own head."""
    adaptive_rank: Literal["off", "min_variance", "energy", "global"] = "off"
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
    linear_storage: Literal["auto", "project", "int8"] = "auto"
    """How a compressed linear layer stores its input for dW. 'project': Z = X[Q1 | cQ2] (r1 + r2 values per
    token; the paper). 'int8': X itself in int8 with per-row scales and stochastic rounding (n + 4 bytes per
    token, unbiased, no basis). 'auto': per linear group, project where that costs no more matmul FLOPs than
    the exact dW it replaces (n·r + m·r <= n·m: q/k/v, gate/up), int8 elsewhere (down_proj, an exact-width
    o_proj); prac_dist.core.cost.linear_storage_mode decides."""
    nonlinear_storage: Literal["int8", "project"] = "int8"
    """How norm and SwiGLU/GELU layers store their inputs under compress_nonlinear. 'int8': the tensor itself
    in int8 with stochastic rounding (0.5x of 16 bits, O(N·n) work, no basis to refresh). 'project': the
    nonlinear PRAC projection with the nonlinear_* ratios and schedule (the paper; ffn-wide g and u make it
    cost about as much compute as the MLP saves). A GELU MLP whose down projection stores nothing (discovery's
    lean GELU MLP, prac_dist/ops/gelu_linear.py) keeps h once for both: in int8 rounded so that gelu(h~) is
    unbiased, or exactly under 'project' (gelu of a projection would bias the down projection's dW)."""

    def __post_init__(self) -> None:
        # Types and choices from the annotations; a list of names becomes a tuple (the dataclass stays hashable).
        check_fields(self, "PRACConfig")
        for name in ("principal_ratio", "random_ratio", "nonlinear_principal_ratio", "nonlinear_random_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"PRACConfig.{name}={value!r} is out of range: accepted is a number in [0, 1]")
        for prefix in ("", "nonlinear_"):
            total = getattr(self, prefix + "principal_ratio") + getattr(self, prefix + "random_ratio")
            if total > 1.0 + 1e-9:
                raise ConfigError(
                    f"PRACConfig.{prefix}principal_ratio + {prefix}random_ratio = {total:g} > 1: "
                    f"r1 + r2 cannot exceed the layer width n"
                )
            if total == 0.0:
                raise ConfigError(
                    f"PRACConfig.{prefix}principal_ratio and {prefix}random_ratio are both 0: "
                    f"nothing would be stored for the weight gradient; accepted is a sum in (0, 1]"
                )
        for name in ("principal_update_interval", "random_update_interval", "nonlinear_principal_update_interval"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"PRACConfig.{name}={value!r}: accepted is an integer >= 1 (optimizer steps)")
        if not 0.0 < self.principal_drift <= 1.0:
            raise ConfigError(f"PRACConfig.principal_drift={self.principal_drift!r}: accepted is a number in (0, 1]")
        if not 0.0 < self.adaptive_energy <= 1.0:
            raise ConfigError(f"PRACConfig.adaptive_energy={self.adaptive_energy!r}: accepted is a number in (0, 1]")
        if self.adaptive_rank != "off" and self.principal_solver != "exact":
            raise ConfigError(f"PRACConfig.adaptive_rank={self.adaptive_rank!r} needs the whole spectrum: "
                              f"accepted principal_solver is 'exact' (got {self.principal_solver!r})")
        if self.target_modules is not None and not self.target_modules:
            raise ConfigError("PRACConfig.target_modules=[]: accepted is None (architecture table) or a non-empty list")

    @classmethod
    def paper(cls, **overrides: Any) -> "PRACConfig":
        """The paper's method at its ranks and bytes: every linear input projected at 0.3/0.3 and every
        norm/SwiGLU/GELU input at 0.2/0.2, 16-bit Z, linear T1 = T2 = 500 with the exact eigendecomposition.

        It departs from the paper in two schedules, nothing else:

        - The linear bases' Q1 is also re-solved at steps 1, 2, 4, ..., 256 (principal_schedule='early_dense'):
          the paper's first basis comes from the random-init activations and serves 500 steps. 9 more exact
          solves per run: +0.005x the baseline's decoder FLOPs per step over 1,000 steps of the model below.
        - The norm/SwiGLU/GELU bases' Q1 is re-solved from every batch by the warm-started randomized solver
          (nonlinear_principal_update_interval=1), not every 500 steps. Their error enters dX through a
          nonlinear backward, and a Q1 from another batch leaves energy in the c-amplified random part:
          +16.9% at 300 steps re-solved every 25 steps (convergence_presets.json), +2.01% over 1,000 steps
          every 2 steps (convergence_long.json; nonlinear_refresh.json holds each schedule's FLOPs per step).

        Measured over 1,000 steps of a 32-wide, 2-layer LLaMA on WikiText-2 (seeds 0 / 1 / 2,
        benchmarks/results/convergence_long.json): validation loss +0.92% / +1.06% / +0.86% above the
        baseline, +0.95% on the mean (a margin smaller than the seeds scatter), against +1.14% / +1.18% /
        +1.03% with the linear bases on the paper's interval; 2.022x the baseline's decoder FLOPs per step,
        refreshes amortised (2.017x on the interval). At the LLaMA-1B layer shape the per-step re-solve of
        the ffn-wide SwiGLU bases costs far more: 6.12x the baseline's decoder FLOPs, against 1.65x on the
        paper's schedule (benchmarks/results/compute_1b.json). The rest of the gap is the norm/SwiGLU projection,
        6 + 6 of 32 coordinates at this width: more linear refreshes (every step +1.23%, principal_schedule=
        'drift' +1.12%, 2 seeds) do not close it. The paper's own schedule stays reachable:
        paper(principal_schedule='interval', nonlinear_principal_update_interval=500,
        nonlinear_principal_solver='exact')."""
        base = dict(linear_storage="project", nonlinear_storage="project", nonlinear_principal_update_interval=1,
                    nonlinear_principal_solver="randomized", nonlinear_principal_schedule="interval",
                    principal_solver="exact", principal_schedule="early_dense", storage_bits=16,
                    compress_nonlinear=True)
        return cls(**{**base, **overrides})

    @classmethod
    def lean(cls, **overrides: Any) -> "PRACConfig":
        """Linear layers compressed (linear_storage='auto'), norm/SwiGLU/GELU inputs kept exact by the lean ops."""
        return cls(**{"compress_nonlinear": False, **overrides})

    @classmethod
    def field_names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "prac") -> "PRACConfig":
        """Build from a mapping (JSON/YAML section); `where` names the section in errors."""
        return build(cls, data, where)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if out["target_modules"] is not None:
            out["target_modules"] = list(out["target_modules"])
        return out

    @property
    def fused_loss_backward(self) -> Optional[str]:
        """The installed head's `backward=` mode, None when fused_loss is off (true means 'auto')."""
        return fused_loss_backward(self.fused_loss)

    def ranks(self, n: int, nonlinear: bool = False) -> Tuple[int, int]:
        """(r1, r2) for a layer of input width n."""
        p = self.nonlinear_principal_ratio if nonlinear else self.principal_ratio
        r = self.nonlinear_random_ratio if nonlinear else self.random_ratio
        # The small epsilon keeps floor(0.3 * 10) = 3, not 2, after float rounding.
        return int(p * n + 1e-9), int(r * n + 1e-9)
