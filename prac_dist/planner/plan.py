"""plan(): predict peak memory per setting and pick the cheapest one that fits a budget.

Peak = model states (parameters, gradients, optimizer: ZeRO paper accounting, sharded per engine)
     + activations saved for backward (prac_dist.planner.activations, a formula per module type)
     + the largest backward transient (head logits or chunk, one layer's gradient temporaries,
       one checkpointed layer's recompute)
     + engine buffers (ZeRO-3/FSDP2 gathered parameters, ZeRO-1/2 gradient bucket).
Every term is a formula of the shape; nothing is measured at plan time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

from .activations import Setting, layer_saved_bytes_per_token, saved_bytes
from .presets import PRESETS, ModelShape, get_shape, shape_from_config

__all__ = ["plan", "Plan", "PlanRow", "ENGINES", "DTYPES", "candidate_settings"]

ENGINES = ("single", "zero1", "zero2", "zero3", "fsdp2")
DTYPES = {"bfloat16": 2, "float16": 2, "float32": 4}
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}

# (principal, random) pairs, best first (highest ratio = least gradient variance).
LINEAR_RATIOS = ((0.4, 0.4), (0.3, 0.3), (0.2, 0.2), (0.1, 0.1))
NONLINEAR_RATIOS = ((0.3, 0.3), (0.2, 0.2), (0.1, 0.1))
CHECKPOINT_EVERY = (0, 4, 3, 2, 1)
# DeepSpeed's default reduce_bucket_size (elements): ZeRO-1/2 keep one such gradient bucket.
_DS_REDUCE_BUCKET = 500_000_000


@dataclass
class PlanRow:
    setting: Setting
    components: Dict[str, int]
    """Bytes: params, grads, optimizer, activations, transient, buffers."""
    activations: Dict[str, int]
    """Saved-for-backward bytes by component (the 'activations' total broken down)."""
    peak_bytes: int
    recompute_fraction: float
    """Forward FLOPs recomputed in backward, as a fraction of one forward pass."""
    fits: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return {"setting": self.setting.label(), "prac_config": self.setting.prac_config_dict(),
                "checkpoint_every": self.setting.checkpoint_every, "components": self.components,
                "activations": self.activations, "peak_bytes": self.peak_bytes,
                "recompute_fraction": self.recompute_fraction, "fits": self.fits}


@dataclass
class Plan:
    model: str
    shape: ModelShape
    micro_batch: int
    seq_len: int
    engine: str
    world_size: int
    dtype: str
    memory_budget_bytes: int
    rows: List[PlanRow] = field(default_factory=list)
    pick: Optional[PlanRow] = None

    @property
    def baseline(self) -> PlanRow:
        return self.rows[0]

    def table(self, all_rows: bool = False) -> str:
        """Baseline, then per checkpointing mix the best-ranked setting (or every row with all_rows)."""
        shown = self.rows if all_rows else _frontier(self.rows)
        gib = 2**30
        head = (f"{'setting':<46} {'params':>7} {'grads':>7} {'optim':>7} {'activ':>7} {'trans':>7} "
                f"{'buffers':>7} {'peak':>8} {'recomp':>6}  fits")
        lines = [f"{self.model}: micro-batch {self.micro_batch} x seq {self.seq_len}, {self.engine} x "
                 f"{self.world_size}, {self.dtype}, budget {self.memory_budget_bytes / gib:.2f} GiB (GiB per rank)",
                 head, "-" * len(head)]
        for r in shown:
            c = r.components
            mark = " <- pick" if r is self.pick else ""
            lines.append(f"{r.setting.label():<46} {c['params'] / gib:>7.2f} {c['grads'] / gib:>7.2f} "
                         f"{c['optimizer'] / gib:>7.2f} {c['activations'] / gib:>7.2f} {c['transient'] / gib:>7.2f} "
                         f"{c['buffers'] / gib:>7.2f} {r.peak_bytes / gib:>8.2f} {r.recompute_fraction:>6.1%}  "
                         f"{'yes' if r.fits else 'no'}{mark}")
        if self.pick is None:
            lines.append("pick: nothing fits; lower the micro-batch or add ranks")
        else:
            lines.append(f"pick: {self.pick.setting.label()} (predicted peak {self.pick.peak_bytes / gib:.2f} GiB)")
            cfg = self.pick.setting.prac_config_dict()
            if cfg:
                lines.append("      PRACConfig(" + ", ".join(f"{k}={v!r}" for k, v in cfg.items()) + ")")
            ck = self.pick.setting.checkpoint_every
            if ck:
                layers = list(range(0, self.shape.layers, ck))
                lines.append(f"      checkpoint decoder layers {layers}")
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        return {"model": self.model, "shape": dataclasses.asdict(self.shape), "micro_batch": self.micro_batch,
                "seq_len": self.seq_len, "engine": self.engine, "world_size": self.world_size, "dtype": self.dtype,
                "memory_budget_bytes": self.memory_budget_bytes,
                "pick": None if self.pick is None else self.pick.to_dict(),
                "rows": [r.to_dict() for r in self.rows]}


def _frontier(rows: Sequence[PlanRow]) -> List[PlanRow]:
    out = [rows[0]]
    for k in CHECKPOINT_EVERY:
        group = [r for r in rows if r.setting.checkpoint_every == k]
        fitting = [r for r in group if r.fits]
        best = min(fitting, key=_rank_key) if fitting else min(group, key=lambda r: r.peak_bytes)
        if best not in out:
            out.append(best)
    return out


def candidate_settings() -> List[Setting]:
    """Every setting the planner weighs (baseline first), in preference order within a checkpointing mix."""
    out: List[Setting] = []
    for ck in CHECKPOINT_EVERY:
        for fused in (False, True):
            out.append(Setting(prac=False, fused_loss=fused, checkpoint_every=ck))
        for p, r in LINEAR_RATIOS:
            nl_options = [(False, 0.2, 0.2)] + [(True, a, b) for a, b in NONLINEAR_RATIOS]
            for compress, a, b in nl_options:
                for bits in (16, 8):
                    for fused in (False, True):
                        out.append(Setting(prac=True, principal_ratio=p, random_ratio=r,
                                           nonlinear_principal_ratio=a, nonlinear_random_ratio=b,
                                           compress_nonlinear=compress, storage_bits=bits, fused_loss=fused,
                                           checkpoint_every=ck))
    return out


def _variance_rank(s: Setting) -> tuple:
    # Exact settings first; then the linear ratio (the paper's variance bound), then nonlinear
    # inputs exact before compressed, higher nonlinear ratio, 16-bit before 8-bit.
    if not s.prac:
        return (0,)
    return (1, -(s.principal_ratio + s.random_ratio), s.compress_nonlinear,
            -(s.nonlinear_principal_ratio + s.nonlinear_random_ratio), s.storage_bits == 8)


def _rank_key(r: PlanRow) -> tuple:
    return (round(r.recompute_fraction, 9), _variance_rank(r.setting), r.peak_bytes)


# ---- the terms -------------------------------------------------------------------------------

def _block_params(shape: ModelShape) -> int:
    return (shape.num_parameters() - shape.vocab * shape.hidden * (1 if shape.tied else 2)) // max(shape.layers, 1)


def _states(shape: ModelShape, engine: str, world: int, b: int) -> Dict[str, int]:
    """ZeRO paper accounting: params and grads in the model dtype; AdamW m, v (+ fp32 master when b < 4)."""
    p = shape.num_parameters()
    params, grads, optim = b * p, b * p, (12 if b < 4 else 8) * p
    if engine in ("zero1", "zero2", "zero3", "fsdp2"):
        optim = -(-optim // world)
    if engine in ("zero2", "zero3", "fsdp2"):
        grads = -(-grads // world)
    if engine in ("zero3", "fsdp2"):
        params = -(-params // world)
    return {"params": params, "grads": grads, "optimizer": optim}


def _buffers(shape: ModelShape, engine: str, world: int, b: int) -> int:
    if engine in ("zero3", "fsdp2") and world > 1:
        # Gathered: the running block and the prefetched next one, plus the root's embedding/head.
        root = shape.vocab * shape.hidden * (1 if shape.tied else 2)
        return b * (2 * _block_params(shape) + root)
    if engine in ("zero1", "zero2") and world > 1:
        return b * min(_DS_REDUCE_BUCKET, shape.num_parameters())
    return 0


def _transient(shape: ModelShape, s: Setting, n: int, b: int) -> int:
    """The largest short-lived allocation of the step, on top of the saved activations."""
    d, f, v = shape.hidden, shape.ffn, shape.vocab
    if s.fused_loss:
        from prac_dist.loss import auto_chunk_size

        chunk = auto_chunk_size(n, v)
        # Chunk logits (float32 + model-dtype cast), float32 dW accumulator, dHidden.
        head = chunk * v * (4 + b) + 4 * v * d + b * n * d
    else:
        # log_softmax backward: the dense float32 gradient from nll_loss and its own float32 result.
        head = n * v * 8
    width = max(d, f)
    # One layer's backward: activation gradients (model dtype) and float32 temporaries of the
    # norm/activation backward, about 2 x width each; plus, under PRAC, one decompressed input.
    layer = n * width * (2 * b + 2 * 4) + (n * width * b if s.prac else 0)
    if s.checkpointed_layers(shape.layers):
        per_token = sum(layer_saved_bytes_per_token(shape, s, b).values())
        layer += n * per_token  # one checkpointed layer's activations, live during its recompute
    return max(head, layer)


def _recompute_fraction(shape: ModelShape, s: Setting, n: int, seq_len: int) -> float:
    d, v = shape.hidden, shape.vocab
    layer_flops = 2 * n * _block_params(shape) + 2 * n * seq_len * d  # matmuls + causal attention
    head_flops = 2 * n * d * v
    forward = shape.layers * layer_flops + head_flops
    again = s.checkpointed_layers(shape.layers) * layer_flops + (head_flops if s.fused_loss else 0)
    return again / forward


def _evaluate(shape: ModelShape, s: Setting, micro_batch: int, seq_len: int, engine: str, world: int,
              b: int, budget: int) -> PlanRow:
    acts = saved_bytes(shape, s, micro_batch, seq_len, b)
    n = micro_batch * seq_len
    comps = dict(_states(shape, engine, world, b))
    comps["activations"] = sum(acts.values())
    comps["transient"] = _transient(shape, s, n, b)
    comps["buffers"] = _buffers(shape, engine, world, b)
    peak = sum(comps.values())
    return PlanRow(setting=s, components=comps, activations=acts, peak_bytes=peak,
                   recompute_fraction=_recompute_fraction(shape, s, n, seq_len), fits=peak <= budget)


# ---- validation and the entry point ----------------------------------------------------------

def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r}: accepted is an integer >= 1")
    return value


def _resolve_model(model: Any) -> tuple:
    if isinstance(model, ModelShape):
        return "custom", model
    if isinstance(model, str):
        return model, get_shape(model)
    try:
        return str(getattr(model, "model_type", None) or model.get("model_type")), shape_from_config(model)
    except AttributeError:
        raise ValueError(f"model={type(model).__name__}: accepted is a preset name {sorted(PRESETS)}, "
                         f"a Hugging Face config (LLaMA family or GPT-2) or a dict of one") from None


def _resolve_dtype(dtype: Any) -> str:
    name = str(dtype).replace("torch.", "")
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: accepted is one of {sorted(DTYPES)}")
    return name


def plan(model: Union[str, ModelShape, Any], micro_batch: int, seq_len: int, engine: str = "single",
         world_size: int = 1, memory_budget_bytes: int = 80 * 2**30, dtype: Any = "bfloat16") -> Plan:
    """Predict per-rank peak memory for every candidate setting and pick the cheapest that fits.

    Ranking among settings that fit: least recomputed forward FLOPs (activation checkpointing,
    the fused loss's logits recompute), then least gradient variance (exact before PRAC, higher
    ratios first), then lowest peak. `Plan.pick` is None when nothing fits.
    """
    name, shape = _resolve_model(model)
    _positive_int("micro_batch", micro_batch)
    _positive_int("seq_len", seq_len)
    _positive_int("world_size", world_size)
    _positive_int("memory_budget_bytes", memory_budget_bytes)
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: accepted is one of {list(ENGINES)}")
    if engine == "single" and world_size != 1:
        raise ValueError(f"world_size={world_size} with engine='single': accepted is 1 "
                         f"(pick zero1/zero2/zero3/fsdp2 for several ranks)")
    if shape.family == "gpt2" and seq_len > shape.max_positions:
        raise ValueError(f"seq_len={seq_len}: accepted is at most {shape.max_positions} (GPT-2 n_positions)")
    dname = _resolve_dtype(dtype)
    b = DTYPES[dname]
    result = Plan(model=name, shape=shape, micro_batch=micro_batch, seq_len=seq_len, engine=engine,
                  world_size=world_size, dtype=dname, memory_budget_bytes=memory_budget_bytes)
    result.rows = [_evaluate(shape, s, micro_batch, seq_len, engine, world_size, b, memory_budget_bytes)
                   for s in candidate_settings()]
    fitting = [r for r in result.rows if r.fits]
    if fitting:
        result.pick = min(fitting, key=_rank_key)
    return result
