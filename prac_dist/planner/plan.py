"""plan(): predict peak memory and FLOPs per setting and pick the fastest one that fits a budget.

Peak = model states (parameters, gradients, optimizer: ZeRO paper accounting, sharded per engine)
     + activations saved for backward (prac_dist.planner.activations, a formula per module type),
       with the fused head's backward='store' float32 dW: held from forward to backward like them
       (4·V·d whatever the batch; its component 'head_buffers')
     + the largest backward transient (head logits or chunk, one layer's gradient temporaries,
       one checkpointed layer's recompute)
     + engine buffers (ZeRO-3/FSDP2 gathered parameters, ZeRO-1/2 gradient bucket).
Compute = FLOPs of one training step (prac_dist.planner.flops: recompute, PRAC's projections and
amortised refreshes, the loss head), held within 5% of benchmarks/compute/compute.py's count.
Every term is a formula of the shape; nothing is measured at plan time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

from prac_dist.config import PRACConfig

from .activations import Setting, basis_bytes, head_backward, layer_saved_bytes_per_token, saved_bytes
from .flops import step_flops
from prac_dist.models.shapes import PRESETS, ModelShape, get_shape, shape_from_config

__all__ = ["plan", "Plan", "PlanRow", "ENGINES", "OPTIMIZERS", "DTYPES", "candidate_settings", "family"]

ENGINES = ("single", "zero1", "zero2", "zero3", "fsdp2")
# 'mixed': float32 master weights and AdamW moments (DeepSpeed's and FSDP2's usual setting);
# 'adamw': AdamW on the model-dtype weights, moments in that dtype (the PRAC paper's GPU runs).
OPTIMIZERS = ("mixed", "adamw")
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
    flops: Dict[str, float]
    """FLOPs of one training step of a micro-batch: decoder, head, refresh(_per_step), total."""
    compute_ratio: float = 1.0
    """flops['total'] over the baseline's: the step's predicted compute, 1.0 = the exact model."""
    fits: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return {"setting": self.setting.label(), "family": family(self.setting),
                "prac_config": self.setting.prac_config_dict(),
                "checkpoint_every": self.setting.checkpoint_every, "components": self.components,
                "activations": self.activations, "peak_bytes": self.peak_bytes, "flops": self.flops,
                "compute_ratio": self.compute_ratio, "fits": self.fits}


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
        """Per setting family its fastest fitting row (every row with all_rows), a legend, the pick and why."""
        shown = self.rows if all_rows else _families(self.rows)
        gib = 2**30
        head = (f"{'setting':<62} {'params':>6} {'grads':>6} {'optim':>6} {'activ':>6} {'trans':>6} "
                f"{'buffers':>7} {'peak':>7} {'TFLOP':>7} {'compute':>7}  fits")
        lines = [f"{self.model}: micro-batch {self.micro_batch} x seq {self.seq_len}, {self.engine} x "
                 f"{self.world_size}, {self.dtype}, budget {self.memory_budget_bytes / gib:.2f} GiB (GiB per rank)",
                 head, "-" * len(head)]
        for r in shown:
            c = r.components
            mark = " <- pick" if r is self.pick else ""
            lines.append(f"{r.setting.label():<62} {c['params'] / gib:>6.2f} {c['grads'] / gib:>6.2f} "
                         f"{c['optimizer'] / gib:>6.2f} {c['activations'] / gib:>6.2f} {c['transient'] / gib:>6.2f} "
                         f"{c['buffers'] / gib:>7.2f} {r.peak_bytes / gib:>7.2f} {r.flops['total'] / 1e12:>7.2f} "
                         f"{r.compute_ratio:>6.3f}x  {'yes' if r.fits else 'no'}{mark}")
        lines += _LEGEND if all_rows else _LEGEND + [_FAMILY_NOTE]
        lines += self._pick_lines()
        return "\n".join(lines)

    def _pick_lines(self) -> List[str]:
        gib = 2**30
        if self.pick is None:
            return ["pick: nothing fits; lower the micro-batch or add ranks"]
        p = self.pick
        out = [f"pick: {p.setting.label()} (predicted peak {p.peak_bytes / gib:.2f} GiB, "
               f"{p.compute_ratio:.3f}x the baseline's FLOPs per step)"]
        faster = [r for r in self.rows if max(r.compute_ratio, 1.0) < max(p.compute_ratio, 1.0) - 1e-9]
        if faster:
            best = min(faster, key=lambda r: r.flops["total"])
            out.append(f"      why: the fastest fitting setting; faster ones do not fit (e.g. {best.setting.label()}: "
                       f"{best.compute_ratio:.3f}x, peak {best.peak_bytes / gib:.2f} GiB)")
        else:
            out.append("      why: no fitting setting costs fewer FLOPs per step (at or under the baseline's count they "
                       "tie); among those, least gradient variance (exact first, then higher ratios), then peak")
        if p.setting.prac is not None:
            cfg = p.setting.prac_config_dict()
            out.append("      PRACConfig(" + ", ".join(f"{k}={v!r}" for k, v in cfg.items()) + ")")
        elif p.setting.fused_loss:
            mode = p.setting.fused_loss_backward
            out.append("      prac_dist.loss.install_fused_loss(model" + ("" if mode == "auto" else
                                                                       f", backward={mode!r}") + ")")
        ck = p.setting.checkpoint_every
        if ck:
            out.append(f"      checkpoint decoder layers {list(range(0, self.shape.layers, ck))}")
        return out

    def to_dict(self) -> Dict[str, Any]:
        return {"model": self.model, "shape": dataclasses.asdict(self.shape), "micro_batch": self.micro_batch,
                "seq_len": self.seq_len, "engine": self.engine, "world_size": self.world_size, "dtype": self.dtype,
                "memory_budget_bytes": self.memory_budget_bytes,
                "pick": None if self.pick is None else self.pick.to_dict(),
                "rows": [r.to_dict() for r in self.rows]}


_LEGEND = [
    "columns: params/grads/optim = model states per rank; activ = bytes saved for backward; trans = the largest",
    "  backward transient; buffers = engine buffers (gathered params, gradient bucket); peak = their sum (GiB);",
    "  TFLOP = one training step of the micro-batch (forward, loss, backward, recompute, PRAC projections and",
    "  refreshes amortised over their PRACConfig intervals); compute = TFLOP / the baseline's (1.000x = no extra compute).",
    "  nl = norm/SwiGLU/GELU inputs (int8, exact, or projected as in PRACConfig.paper()); Z = bits of a stored",
    "  projection; fused loss = chunked head that never stores the logits; ckpt = activation checkpointing.",
]
_FAMILY_NOTE = "rows: each family's fastest fitting setting (smallest peak when none fits); --all prints every one."


def family(s: Setting) -> str:
    """The family a setting belongs to in the default view: method, Z bits, loss head."""
    c = s.prac
    if c is None:
        kind = "checkpointing" if s.checkpoint_every else "baseline"
    elif not c.compress_nonlinear:
        kind = "PRAC lean"
    else:
        kind = "PRAC paper" if c.nonlinear_storage == "project" else "PRAC default"
    if c is not None:
        kind += f", Z {c.storage_bits}-bit"
    return kind + (", fused loss" if s.fused_loss_backward else "")


def _families(rows: Sequence[PlanRow]) -> List[PlanRow]:
    out = [rows[0]]
    for name in dict.fromkeys(family(r.setting) for r in rows):
        group = [r for r in rows if family(r.setting) == name]
        fitting = [r for r in group if r.fits]
        best = min(fitting, key=_rank_key) if fitting else min(group, key=lambda r: r.peak_bytes)
        if best not in out:
            out.append(best)
    return out


def _configs() -> List[PRACConfig]:
    """The PRACConfigs weighed: lean(), the default and paper() at each ratio, 16- and 8-bit Z, either head."""
    out = []
    for p, r in LINEAR_RATIOS:
        ratios = dict(principal_ratio=p, random_ratio=r)
        options = [PRACConfig.lean(**ratios), PRACConfig(**ratios)] + \
            [PRACConfig.paper(**ratios, nonlinear_principal_ratio=a, nonlinear_random_ratio=b)
             for a, b in NONLINEAR_RATIOS]
        for cfg in options:
            for bits in (16, 8):
                for fused in (False, True):
                    out.append(dataclasses.replace(cfg, storage_bits=bits, fused_loss=fused))
    return out


def candidate_settings() -> List[Setting]:
    """Every setting the planner weighs (baseline first), in preference order within a checkpointing mix."""
    out: List[Setting] = []
    configs = _configs()
    for ck in CHECKPOINT_EVERY:
        out += [Setting(fused_loss=fused, checkpoint_every=ck) for fused in (False, True)]
        out += [Setting(prac=cfg, checkpoint_every=ck) for cfg in configs]
    return out


def _variance_rank(s: Setting) -> tuple:
    # Exact settings first; then the linear ratio (the paper's variance bound), then nonlinear
    # inputs exact before compressed, int8 (unbiased, full width) before projected, higher nonlinear
    # ratio, 16-bit before 8-bit.
    c = s.prac
    if c is None:
        return (0,)
    return (1, -(c.principal_ratio + c.random_ratio), c.compress_nonlinear, c.nonlinear_storage == "project",
            -(c.nonlinear_principal_ratio + c.nonlinear_random_ratio), c.storage_bits == 8)


def _rank_key(r: PlanRow) -> tuple:
    # Fastest first: FLOPs per step to 0.1% (closer is within the prediction's own error). A setting
    # below the exact model's count (a low-rank dW is cheaper than the full one) ties with it: saving
    # FLOPs is no reason to add gradient variance, so among those the least variance wins.
    return (round(max(r.compute_ratio, 1.0), 3), _variance_rank(r.setting), r.peak_bytes)


# ---- the terms -------------------------------------------------------------------------------

def _block_params(shape: ModelShape) -> int:
    return (shape.num_parameters() - shape.vocab * shape.hidden * (1 if shape.tied else 2)) // max(shape.layers, 1)


def _states(shape: ModelShape, engine: str, world: int, b: int, optimizer: str = "mixed") -> Dict[str, int]:
    """ZeRO paper accounting: params and grads in the model dtype; AdamW's m, v in float32 plus a float32
    master copy when b < 4 ('mixed'), or m, v in the model dtype ('adamw': AdamW on the weights as they are)."""
    p = shape.num_parameters()
    optim = (12 if b < 4 else 8) * p if optimizer == "mixed" else 2 * b * p
    params, grads = b * p, b * p
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


def _layer_transient(shape: ModelShape, s: Setting, n: int, b: int) -> int:
    """One decoder layer's backward temporaries (the top layer's, beside every saved activation)."""
    d, f = shape.hidden, shape.ffn
    if s.prac is None:
        # Activation gradients (model dtype) and float32 temporaries of the norm/activation backward.
        return n * max(d, f) * (2 * b + 2 * 4)
    # PRAC's backward decompresses whole inputs: MemTracker measures 24·f + 18·d bytes per token at bf16
    # (LLaMA-130M x 128 and LLaMA-1B x 64/128 x 256 agree to 0.1%; both have d/f = 0.375, so the split
    # between f and d is one fit of two), 4·f more when norm/SwiGLU inputs are compressed (their float32
    # decompression). Scaled by b/2 for other dtypes.
    per_token = (24 * f + 18 * d) * b // 2 + (4 * f if s.prac.compress_nonlinear else 0)
    return n * per_token


def _phases(shape: ModelShape, s: Setting, n: int, b: int, acts: Dict[str, int], states: Dict[str, int],
            optimizer: str) -> Dict[str, int]:
    """Activations, transient and gradients live at the step's peak (the largest of its phases).

    forward: every activation and the loss head's temporaries, no gradient yet (zero_grad sets them
      to None; HF's head peaks here on its float32 logits);
    backward: every activation, the top layer's backward temporaries (and its recompute when
      checkpointed) and the head's weight gradient (PRAC peaks here);
    bottom (checkpointing): every gradient, the first checkpointed input, one recomputed layer;
    optimizer: every gradient, PRAC's bases and the update's temporaries ('mixed': the float32
      gradient and denominator of the largest tensor; 'adamw' (foreach): one model-dtype copy of all).
    """
    total = sum(acts.values())
    head_grad = b * (shape.vocab * shape.hidden + shape.hidden)  # lm_head and final norm, first to finish
    layer = _layer_transient(shape, s, n, b)
    if s.checkpointed_layers(shape.layers):
        recomputed = n * sum(layer_saved_bytes_per_token(shape, s, b).values())
        # PRAC's backward temporaries peak partway through the recomputed layer's backward, when part of what
        # the recompute saved is already freed: MemTracker finds 0.32 (LLaMA-1B x 64) to 0.55 (LLaMA-130M x 128)
        # of that layer alive then (benchmarks/results/peak_memory.json, 'PRACConfig() + full checkpointing').
        layer += recomputed // 2 if s.prac is not None else recomputed
    largest = shape.vocab * shape.hidden
    update = 2 * 4 * largest if optimizer == "mixed" else states["params"]
    phases = {"forward": (total, _head_transient(shape, s, n, b), 0), "backward": (total, layer, head_grad),
              "optimizer": (acts.get("prac_bases", 0), update, states["grads"])}
    ckpt = s.checkpointed_layers(shape.layers)
    if ckpt:
        freed = acts["checkpointed_inputs"] * (ckpt - 1) // ckpt
        phases["bottom"] = (total - freed, layer, states["grads"])
    name = max(phases, key=lambda k: sum(phases[k]))
    a, t, g = phases[name]
    return {"activations": a, "transient": t, "grads": g, "phase": name}


def _head_transient(shape: ModelShape, s: Setting, n: int, b: int) -> int:
    """The loss head's largest short-lived allocation."""
    d, v = shape.hidden, shape.vocab
    mode = head_backward(shape, s, n, b)
    if mode is None:
        # log_softmax backward: the dense float32 gradient from nll_loss and its own float32 result.
        return n * v * 8
    from prac_dist.loss import auto_chunk_size

    # Chunk logits (float32 + model-dtype cast); 'recompute' also allocates its float32 dW accumulator
    # and dHidden in backward. 'store' holds those from its forward on: they are in the activations
    # ('head_buffers', 'head'), not counted again here.
    head = auto_chunk_size(n, v) * v * (4 + b)
    return head + (4 * v * d + b * n * d if mode == "recompute" else 0)


def _evaluate(shape: ModelShape, s: Setting, micro_batch: int, seq_len: int, engine: str, world: int,
              b: int, budget: int, optimizer: str = "mixed") -> PlanRow:
    acts = saved_bytes(shape, s, micro_batch, seq_len, b)
    acts["prac_bases"] = basis_bytes(shape, s)  # held all step long, like the activations at their peak
    n = micro_batch * seq_len
    comps = dict(_states(shape, engine, world, b, optimizer))
    live = _phases(shape, s, n, b, acts, comps, optimizer)
    comps.update(activations=live["activations"], transient=live["transient"], grads=live["grads"])
    comps["buffers"] = _buffers(shape, engine, world, b)
    peak = sum(comps.values())
    return PlanRow(setting=s, components=comps, activations=acts, peak_bytes=peak,
                   flops=step_flops(shape, s, micro_batch, seq_len, b), fits=peak <= budget)


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
         world_size: int = 1, memory_budget_bytes: int = 80 * 2**30, dtype: Any = "bfloat16",
         optimizer: str = "mixed") -> Plan:
    """Predict per-rank peak memory and step FLOPs for every candidate setting; pick the fastest that fits.

    Ranking among settings that fit: fewest FLOPs per step (activation checkpointing's recompute,
    PRAC's projections and refreshes, the fused loss's logits recompute when it has one), then least
    gradient variance (exact before PRAC, higher ratios first), then lowest peak. `Plan.pick` is
    None when nothing fits.
    """
    name, shape = _resolve_model(model)
    _positive_int("micro_batch", micro_batch)
    _positive_int("seq_len", seq_len)
    _positive_int("world_size", world_size)
    _positive_int("memory_budget_bytes", memory_budget_bytes)
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: accepted is one of {list(ENGINES)}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r}: accepted is one of {list(OPTIMIZERS)}")
    if engine == "single" and world_size != 1:
        raise ValueError(f"world_size={world_size} with engine='single': accepted is 1 "
                         f"(pick zero1/zero2/zero3/fsdp2 for several ranks)")
    if shape.family == "gpt2" and seq_len > shape.max_positions:
        raise ValueError(f"seq_len={seq_len}: accepted is at most {shape.max_positions} (GPT-2 n_positions)")
    dname = _resolve_dtype(dtype)
    b = DTYPES[dname]
    result = Plan(model=name, shape=shape, micro_batch=micro_batch, seq_len=seq_len, engine=engine,
                  world_size=world_size, dtype=dname, memory_budget_bytes=memory_budget_bytes)
    result.rows = [_evaluate(shape, s, micro_batch, seq_len, engine, world_size, b, memory_budget_bytes, optimizer)
                   for s in candidate_settings()]
    base_flops = result.rows[0].flops["total"]
    for r in result.rows:
        r.compute_ratio = r.flops["total"] / base_flops
    fitting = [r for r in result.rows if r.fits]
    if fitting:
        result.pick = min(fitting, key=_rank_key)
    return result
