"""Measure, not predict: the peak memory of a whole training step, with no compute and no GPU.

The model is built inside `torch._subclasses.fake_tensor.FakeTensorMode` (tensors carry shape, dtype
and device, no data), and `torch.distributed._tools.mem_tracker.MemTracker` records every allocation
of two training steps: forward, loss, backward, optimizer step and PRAC's `step()`. The peak of the
second (steady-state) step is what a run holds from then on; the first step's is kept too (PRAC
refreshes every basis there). Time goes to Python per op, not to bytes: a LLaMA-1B step costs the
same few minutes at any micro-batch, and a model that fits no machine here is measured as easily.

What it sees is the PyTorch code path (prac_dist's kernel='torch'); a Triton kernel that fuses
temporaries allocates less, never more, than this path (docs/loss_and_planner.md).

    from prac_dist.planner.measure import RECIPES, measure_peak
    m = measure_peak("llama_1b", RECIPES["PRACConfig()"], micro_batch=64, seq_len=256)
    m.peak_bytes, m.parts   # bytes; {'params', 'grads', 'optimizer', 'activations', 'temporaries', ...}
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from prac_dist.config import PRACConfig
from prac_dist.models.shapes import PRESETS, ModelShape, get_shape, hf_config

__all__ = ["Recipe", "RECIPES", "OPTIMIZERS", "SAVED_OPS", "StepPeak", "measure_peak", "measure_peak_by_depth",
           "largest_micro_batch", "measured_plan", "selective_context", "MixedPrecisionAdamW", "num_layers"]

aten = torch.ops.aten

# Selective checkpointing ("op" mode in torchtitan's terms): keep matmul and attention outputs,
# recompute the cheap elementwise ops (norms, SiLU, products, rotary) in backward.
SAVED_OPS = {aten.mm.default, aten.addmm.default, aten.bmm.default,
             aten._scaled_dot_product_flash_attention_for_cpu.default,
             aten._scaled_dot_product_efficient_attention.default,
             aten._scaled_dot_product_flash_attention.default,
             aten._scaled_dot_product_cudnn_attention.default}


def _save_matmuls(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def selective_context():
    """torch.utils.checkpoint context_fn of selective checkpointing (SAVED_OPS saved, the rest recomputed)."""
    return create_selective_checkpoint_contexts(_save_matmuls)


@dataclass(frozen=True)
class Recipe:
    """One way to train the model: PRAC or not, the loss head, activation checkpointing."""

    prac: Optional[PRACConfig] = None
    fused_loss: bool = False
    """prac_dist's chunked head (install_fused_loss, 'auto') without PRAC; with PRAC the config decides."""
    checkpoint: Optional[str] = None
    """None, 'full' (HF checkpointing of every decoder layer) or 'selective' (SAVED_OPS kept)."""

    def __post_init__(self) -> None:
        if self.checkpoint not in (None, "full", "selective"):
            raise ValueError(f"Recipe.checkpoint={self.checkpoint!r}: accepted is None, 'full' or 'selective'")

    def planner_setting(self):
        """The planner's Setting of this recipe, None where the planner has no model of it."""
        from .activations import Setting

        if self.checkpoint == "selective":
            return None
        every = 1 if self.checkpoint == "full" else 0
        if self.prac is not None:
            return Setting.from_config(self.prac, checkpoint_every=every)
        return Setting(fused_loss=self.fused_loss, checkpoint_every=every)


RECIPES: Dict[str, Recipe] = {
    "HF": Recipe(),
    "HF full checkpointing": Recipe(checkpoint="full"),
    "selective checkpointing": Recipe(checkpoint="selective"),
    "fused loss head": Recipe(fused_loss=True),
    "PRACConfig()": Recipe(prac=PRACConfig()),
    "lean()": Recipe(prac=PRACConfig.lean()),
    "paper()": Recipe(prac=PRACConfig.paper()),
    "PRACConfig() + full checkpointing": Recipe(prac=PRACConfig(), checkpoint="full"),
    # The head's other mode: PRACConfig()'s 'auto' stores from about d tokens on (every row here).
    "PRACConfig(fused_loss='recompute')": Recipe(prac=PRACConfig(fused_loss="recompute")),
}
# torch.compile is not among them: TorchDynamo does not trace while a TorchDispatchMode (FakeTensorMode,
# MemTracker) is active, so a compiled model runs eagerly here (checked: no frame captured, the peak of
# activation_memory_budget=0.5 equal to eager's to the byte). Its peak needs a GPU.


class MixedPrecisionAdamW(torch.optim.Optimizer):
    """AdamW on float32 master weights and moments for a model in bf16/fp16 (DeepSpeed's and FSDP2's usual
    mixed precision: 2 + 2 bytes of weight and gradient, 12 of optimizer state per parameter). Each model
    gradient is cast to float32 one parameter at a time, and the model weight is the rounded master."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["master"] = p.detach().float()
                    state["exp_avg"] = torch.zeros_like(state["master"])
                    state["exp_avg_sq"] = torch.zeros_like(state["master"])
                state["step"] += 1
                master, m, v = state["master"], state["exp_avg"], state["exp_avg_sq"]
                g = p.grad.float()
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (v / (1 - beta2 ** state["step"])).sqrt_().add_(group["eps"])
                master.mul_(1 - group["lr"] * group["weight_decay"])
                master.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1 ** state["step"]))
                p.copy_(master)
        return None


# 'adamw': torch.optim.AdamW on the bf16 weights (moments in bf16; foreach, the GPU default).
# 'mixed': float32 master weights and moments (MixedPrecisionAdamW).
OPTIMIZERS: Dict[str, Callable] = {
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-4, foreach=True),
    "mixed": lambda params: MixedPrecisionAdamW(params, lr=1e-4),
}

# MemTracker's reference types -> the parts reported here.
_PARTS = {"Parameter": "params", "Buffer": "buffers", "Gradient": "grads", "Optstate": "optimizer",
          "Activation": "activations", "Temp": "temporaries", "Other": "other"}


@dataclass
class StepPeak:
    """Peak bytes of a training step and its parts at that moment."""

    peak_bytes: int
    parts: Dict[str, int]
    first_step_peak_bytes: int
    first_step_parts: Dict[str, int] = field(default_factory=dict)

    @property
    def worst_bytes(self) -> int:
        """The larger of the two steps' peaks: what must fit for training to start."""
        return max(self.peak_bytes, self.first_step_peak_bytes)

    def to_dict(self) -> Dict[str, Any]:
        return {"peak_bytes": self.peak_bytes, "parts": self.parts,
                "first_step_peak_bytes": self.first_step_peak_bytes, "first_step_parts": self.first_step_parts}


def _parts(snapshot) -> Dict[str, int]:
    out = {name: 0 for name in _PARTS.values()}
    total = 0
    for dev_snap in snapshot.values():
        for kind, nbytes in dev_snap.items():
            key = getattr(kind, "value", kind)
            if key in _PARTS:
                out[_PARTS[key]] += nbytes
            else:  # 'Total'
                total += nbytes
    return {**out, "total": total}


def _model_config(model: Union[str, ModelShape, Any], layers: Optional[int] = None):
    """A Hugging Face config: a preset name, a ModelShape, a config object, or a dict with model_type;
    `layers` replaces its depth."""
    config = _base_config(model)
    if layers is not None:
        config = copy.deepcopy(config)
        config.num_hidden_layers = layers
        if hasattr(config, "layer_types") and config.layer_types is not None:  # per-layer lists follow the depth
            config.layer_types = list(config.layer_types[:1]) * layers
    return config


def num_layers(model: Union[str, ModelShape, Any]) -> int:
    """The decoder depth of a model given as measure_peak accepts it."""
    return int(_base_config(model).num_hidden_layers)


def _base_config(model: Union[str, ModelShape, Any]):
    if isinstance(model, str):
        return hf_config(get_shape(model))
    if isinstance(model, ModelShape):
        return hf_config(model)
    if isinstance(model, dict):
        from transformers import AutoConfig

        data = dict(model)
        if "model_type" not in data:
            raise ValueError(f"model={sorted(data)[:5]}...: a config dict needs 'model_type'; accepted is a preset "
                             f"{sorted(PRESETS)}, a ModelShape or a Hugging Face config")
        return AutoConfig.for_model(data.pop("model_type"), **data)
    if hasattr(model, "model_type"):
        return model
    raise ValueError(f"model={type(model).__name__}: accepted is a preset {sorted(PRESETS)}, a ModelShape or a "
                     f"Hugging Face config")


def _build(config, recipe: Recipe, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    from prac_dist.loss import install_fused_loss
    from prac_dist.patching import apply_prac

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # a fake module cannot be cast with .to(dtype): build it in the dtype
    try:
        model = AutoModelForCausalLM.from_config(config).train()
    finally:
        torch.set_default_dtype(previous)
    if recipe.checkpoint is not None:
        kwargs = {"use_reentrant": False}
        if recipe.checkpoint == "selective":
            kwargs["context_fn"] = selective_context
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if recipe.prac is not None:
        apply_prac(model, recipe.prac)
    elif recipe.fused_loss and not install_fused_loss(model):
        raise ValueError(f"Recipe.fused_loss=True: {type(model).__name__} has no fused loss head "
                         f"(prac_dist.models.registry)")
    return model


def _reset_peak(tracker) -> None:
    # MemTracker keeps one running peak over its whole life; restart it so the second step's is its own.
    tracker._peak_mem.clear()
    tracker._peak_mem_snap.clear()


def measure_peak(model: Union[str, ModelShape, Any], recipe: Recipe, micro_batch: int, seq_len: int,
                 optimizer: str = "adamw", dtype: torch.dtype = torch.bfloat16,
                 layers: Optional[int] = None) -> StepPeak:
    """Peak memory of two training steps of `model` under `recipe`, measured in FakeTensorMode.

    model: a preset name (prac_dist.models.shapes.PRESETS), a ModelShape, a Hugging Face config or a
    config dict with 'model_type'. optimizer: a key of OPTIMIZERS. layers: build that many decoder
    layers instead of the model's (see measure_peak_by_depth).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from prac_dist.patching import step as prac_step

    for name, value in (("micro_batch", micro_batch), ("seq_len", seq_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r}: accepted is an integer >= 1")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r}: accepted is one of {sorted(OPTIMIZERS)}")
    config = _model_config(model, layers)
    with FakeTensorMode(allow_non_fake_inputs=False):
        net = _build(config, recipe, dtype)
        opt = OPTIMIZERS[optimizer](net.parameters())
        ids = torch.randint(0, config.vocab_size, (micro_batch, seq_len))
        tracker = MemTracker()
        tracker.track_external(net, opt)
        peaks = []
        with tracker:
            for _ in range(2):
                net(input_ids=ids, labels=ids).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if recipe.prac is not None:
                    prac_step(net)
                peaks.append(_parts(tracker.get_tracker_snapshot("peak")))
                _reset_peak(tracker)
                tracker.reset_mod_stats()
    first, second = peaks
    return StepPeak(peak_bytes=second.pop("total"), parts=second, first_step_peak_bytes=first.pop("total"),
                    first_step_parts=first)


def measure_peak_by_depth(model: Union[str, ModelShape, Any], recipe: Recipe, micro_batch: int, seq_len: int,
                          optimizer: str = "adamw", depths: Sequence[int] = (2, 4),
                          dtype: torch.dtype = torch.bfloat16) -> StepPeak:
    """measure_peak at two shallow depths, extended along the line to the model's own depth.

    Decoder layers are identical, so each part of the peak (and the peak) grows by the same bytes per
    layer as long as the peak falls in the same phase of the step: the line through 2 and 4 layers of
    HF LLaMA-1B at 64 x 256 gives the 24-layer measurement's 47.64 GiB (benchmarks/results/
    peak_memory.json holds both), and tests/planner/test_measure.py holds it to the byte on a tiny
    LLaMA. A 24-layer measurement costs about 6x a 4-layer one (Python time per op).
    """
    target = num_layers(model)
    lo, hi = depths
    if not 1 <= lo < hi:
        raise ValueError(f"depths={tuple(depths)!r}: accepted are two layer counts 1 <= a < b")
    if target in depths:
        return measure_peak(model, recipe, micro_batch, seq_len, optimizer, dtype, layers=target)
    a, b = (measure_peak(model, recipe, micro_batch, seq_len, optimizer, dtype, layers=d) for d in (lo, hi))

    def extend(x: int, y: int) -> int:
        return round(x + (y - x) * (target - lo) / (hi - lo))

    return StepPeak(peak_bytes=extend(a.peak_bytes, b.peak_bytes),
                    parts={k: extend(a.parts[k], b.parts[k]) for k in a.parts},
                    first_step_peak_bytes=extend(a.first_step_peak_bytes, b.first_step_peak_bytes),
                    first_step_parts={k: extend(a.first_step_parts[k], b.first_step_parts[k])
                                      for k in a.first_step_parts})


def fit_line(points: Sequence[tuple]) -> tuple:
    """(intercept, slope) of the line through two (x, y) points."""
    (x0, y0), (x1, y1) = points
    slope = (y1 - y0) / (x1 - x0)
    return y0 - slope * x0, slope


def largest_micro_batch(measure: Callable[[int], int], budget_bytes: int, probes: Sequence[int] = (8, 16),
                        verify: bool = True, max_rounds: int = 8) -> Dict[str, Any]:
    """The largest micro-batch whose measured peak fits `budget_bytes`.

    The peak is affine in the micro-batch at a fixed sequence length while the same phase of the step
    holds it (every activation and temporary scales with the tokens, the states do not): `measure`
    (micro-batch -> peak bytes) at two `probes` gives the line. With `verify` the predicted batch and the
    one above are measured; when they do not straddle the budget (another phase of the step holds the
    peak there, e.g. a loss head that changes mode with the token count), the line is drawn again
    through the two measured batches nearest the budget on either side, until b fits and b + 1 does not.
    'verified' says whether that boundary was measured within `max_rounds`.
    """
    measured: Dict[int, int] = {b: measure(b) for b in probes}
    intercept, slope = fit_line(sorted(measured.items())[:2])
    if slope <= 0:
        raise ValueError(f"peak does not grow with the micro-batch (slope {slope:.3g} bytes): probes {list(probes)}")
    predicted = max(0, _crossing(intercept, slope, budget_bytes))

    def result(largest: int, verified: bool) -> Dict[str, Any]:
        return {"predicted": predicted, "intercept_bytes": intercept, "bytes_per_sample": slope, "largest": largest,
                "verified": verified, "measured": {str(k): v for k, v in sorted(measured.items())}}

    if not verify or predicted == 0:
        return result(predicted, False)
    b = predicted
    for _ in range(max_rounds):
        for x in (b, b + 1):
            if x not in measured:
                measured[x] = measure(x)
        if measured[b] <= budget_bytes < measured[b + 1]:
            return result(b, True)
        b = _next_guess(measured, budget_bytes)
    return result(max([k for k, v in measured.items() if v <= budget_bytes], default=0), False)


def _crossing(intercept: float, slope: float, budget_bytes: int) -> int:
    """The largest batch on the line intercept + slope·b at or under the budget."""
    return math.floor((budget_bytes - intercept) / slope)


def _next_guess(measured: Dict[int, int], budget_bytes: int) -> int:
    """The batch where the line through the nearest measured batches below and above the budget meets it."""
    fits = [k for k, v in measured.items() if v <= budget_bytes]
    over = [k for k, v in measured.items() if v > budget_bytes]
    if not fits:  # every measured batch is over: the line through the two smallest
        lo, hi = sorted(measured)[:2]
    elif not over:  # every one fits: the line through the two largest
        lo, hi = sorted(measured)[-2:]
    else:
        lo, hi = max(fits), min(over)
        if hi == lo + 1:
            return lo
    intercept, slope = fit_line([(lo, measured[lo]), (hi, measured[hi])])
    guess = _crossing(intercept, slope, budget_bytes) if slope > 0 else lo
    if fits and over:  # stay strictly inside the bracket so each round narrows it
        guess = min(max(guess, max(fits)), min(over) - 1)
    return max(1, guess)


def measured_plan(model: Union[str, ModelShape, Any], budget_bytes: int, seq_len: int, micro_batch: int,
                  optimizer: str = "mixed", recipes: Optional[Dict[str, Recipe]] = None,
                  depths: Optional[Sequence[int]] = (2, 4), verify: bool = True,
                  log: Optional[Callable[[str], None]] = None) -> List[Dict[str, Any]]:
    """prac-plan --measure: per recipe, the largest micro-batch whose measured step fits `budget_bytes`.

    Probes `micro_batch` and twice it (the peak is affine in the batch); `depths` measures two shallow
    copies of the model and extends the line to its depth (None: the whole model, slower). Rows are
    sorted largest batch first.
    """
    recipes = RECIPES if recipes is None else recipes
    rows = []
    for name, recipe in recipes.items():
        cache: Dict[int, int] = {}

        def measure(batch: int) -> int:
            if batch not in cache:
                m = (measure_peak(model, recipe, batch, seq_len, optimizer) if depths is None else
                     measure_peak_by_depth(model, recipe, batch, seq_len, optimizer, depths))
                cache[batch] = m.worst_bytes
            return cache[batch]

        fit = largest_micro_batch(measure, budget_bytes, probes=(micro_batch, 2 * micro_batch), verify=verify)
        rows.append({"setting": name, **fit})
        if log is not None:
            log(f"{name}: largest micro-batch {fit['largest']}")
    return sorted(rows, key=lambda r: -r["largest"])
