"""Bytes saved for backward, as formulas of the model shape (no measurement at plan time).

Per token, per module type, for Hugging Face LLaMA-family and GPT-2 models with SDPA
attention (b = bytes of the model dtype). The terms were read off what HF and prac_dist
actually save (a saved-tensor hook, transformers 5.x, torch 2.13; see
benchmarks/memory/planner_accuracy.py, which checks the totals against measure_saved_bytes):

LLaMA decoder layer, HF:
  RMSNorm (x2)        x.float() (4d) + rstd (4) + normalised x in the model dtype (bd)
  q/k/v input         bd (one tensor, read by all three)
  SDPA                q, k, v, output (b(2d + 2 kv_dim)) + float32 logsumexp per head (4h);
                      o_proj's input is a view of the SDPA output: nothing extra
  gate/up input       bd
  SwiGLU              gate out, SiLU out, up out, down_proj input (4bf)
GPT-2 block, HF:
  LayerNorm (x2)      input (bd) + mean, rstd (2 x 4 on CUDA; 2 x b on CPU, under 0.02% here)
  c_attn input        bd;  SDPA: 6bd + 4h (q copy, the 3d qkv storage k/v view, out, one more d)
  c_fc input          bd;  GELU (tanh form, elementwise): 4bf;  c_proj input: bf
prac_dist (apply_prac): a group of linears reading one tensor stores, as prac_dist.core.cost decides
(linear_storage 'auto': projected where that costs no more FLOPs than the exact dW, i.e. q/k/v and
gate/up at 0.6n; int8 for down_proj), either Z = X[Q1|cQ2] (r1 + r2 values; r + 4 bytes at
storage_bits=8) or X in int8 (n + 4 bytes); norms keep rstd (and mean) in float32 plus their input,
exact, int8 (nonlinear_storage, the default) or projected ('project', the paper); SwiGLU keeps gate
and up outputs (SiLU recomputed), GELU its input; the attention-output linear stays exact (it
shares SDPA's storage).
Head: HF keeps the lm_head input (bd), the float32 log-softmax (4V) and the shifted labels (8);
the fused loss (prac_dist.loss) in backward='recompute' keeps the input, labels (8) and a float32
logsumexp (4); in backward='store' it keeps the finished dX (bd) and the float32 dW (4Vd, no bias on
these heads), whatever the batch. 'auto' (fused_loss=True) picks by prac_dist.loss.store_fits, per
micro-batch: store from about d tokens on (LLaMA-60M: 517), so one setting's head changes with the batch.
The dW buffer is no activation, but it is held exactly as long (head forward to head backward) and the
head saves it for backward, so measure_saved_bytes counts it: it is the component 'head_buffers' of
saved_bytes, and prac_dist.planner.plan's transient does not count it a second time.
A checkpointed layer keeps only its input (bd) until its recompute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Union

from prac_dist.config import PRACConfig, fused_loss_backward
from prac_dist.core.cost import linear_storage_mode, stored_bytes_per_token
from prac_dist.loss.linear_cross_entropy import BACKWARDS, store_fits

from prac_dist.models.shapes import ModelShape

__all__ = ["Setting", "saved_bytes", "basis_bytes", "layer_saved_bytes_per_token", "linear_groups", "head_backward"]

_STAT = 4  # float32 per-row norm statistic (rstd, mean)
_INT64 = 8


@dataclass(frozen=True)
class Setting:
    """One row of the plan: the PRACConfig that apply_prac installs (None: the exact model), the loss head
    of an exact model, and which layers to checkpoint. Every PRAC field is read from the config."""

    prac: Optional[PRACConfig] = None
    """apply_prac(model, prac); its fused_loss decides the head. None: no compression."""
    fused_loss: Union[bool, str] = False
    """Without PRAC: False (HF's head), True or 'auto' (store when store_fits), 'store', 'recompute'
    (prac_dist.loss.install_fused_loss). With PRAC it stays False: the config's fused_loss is the head."""
    checkpoint_every: int = 0
    """0: no activation checkpointing; k: checkpoint layers 0, k, 2k, ... (k = 1: all)."""

    def __post_init__(self) -> None:
        if self.fused_loss not in (False, True) + BACKWARDS:
            raise ValueError(f"Setting.fused_loss={self.fused_loss!r}: accepted is false, true or one of "
                             f"{list(BACKWARDS)}")
        if self.prac is not None:
            if not isinstance(self.prac, PRACConfig):
                raise ValueError(f"Setting.prac={self.prac!r}: accepted is None or a PRACConfig")
            if self.fused_loss is not False:
                raise ValueError(f"Setting.fused_loss={self.fused_loss!r} with a PRACConfig: accepted is false "
                                 f"(the head is PRACConfig.fused_loss={self.prac.fused_loss!r})")
            if self.prac.target_modules is not None:
                raise ValueError(f"PRACConfig.target_modules={list(self.prac.target_modules)!r}: the planner models "
                                 f"the architecture table's linears; accepted is None")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ValueError(f"Setting.checkpoint_every={self.checkpoint_every!r}: accepted is an integer >= 0")

    @classmethod
    def from_config(cls, config: PRACConfig, checkpoint_every: int = 0) -> "Setting":
        """The setting of apply_prac(model, config)."""
        return cls(prac=config, checkpoint_every=checkpoint_every)

    @property
    def fused_loss_backward(self) -> Optional[str]:
        """The installed head's `backward=` mode, None for HF's head (the rule PRACConfig applies)."""
        return self.prac.fused_loss_backward if self.prac is not None else fused_loss_backward(self.fused_loss)

    def checkpointed_layers(self, layers: int) -> int:
        if self.checkpoint_every <= 0:
            return 0
        return (layers + self.checkpoint_every - 1) // self.checkpoint_every

    def label(self) -> str:
        parts = []
        c = self.prac
        if c is not None:
            parts.append(f"PRAC {c.principal_ratio:g}/{c.random_ratio:g}")
            if c.linear_storage != "auto":
                parts.append(f"linear {c.linear_storage}")
            if not c.compress_nonlinear:
                parts.append("nl exact")
            elif c.nonlinear_storage == "project":
                parts.append(f"nl {c.nonlinear_principal_ratio:g}/{c.nonlinear_random_ratio:g}")
            else:
                parts.append("nl int8")
            parts.append(f"Z {c.storage_bits}-bit")
        else:
            parts.append("baseline")
        mode = self.fused_loss_backward
        if mode == "auto":
            parts.append("fused loss")
        elif mode:
            parts.append(f"fused loss {mode}")
        if self.checkpoint_every == 1:
            parts.append("ckpt all")
        elif self.checkpoint_every > 1:
            parts.append(f"ckpt every {self.checkpoint_every}")
        return ", ".join(parts)

    def prac_config_dict(self) -> Dict[str, object]:
        """The PRACConfig fields that differ from PRACConfig() (empty for the baseline; {} plus nothing
        when the config is the default: check `prac is not None`)."""
        if self.prac is None:
            return {}
        default = PRACConfig().to_dict()
        return {k: v for k, v in self.prac.to_dict().items() if default[k] != v}


def linear_groups(shape: ModelShape):
    """(n, m) of each compressed linear group of one decoder layer: input width, total output width.

    The attention-output linear stays exact under SDPA (its input is SDPA's own saved output).
    """
    d, f = shape.hidden, shape.ffn
    if shape.family == "llama":
        return ((d, d + 2 * shape.kv_dim), (d, 2 * f), (f, d))  # q/k/v, gate/up, down
    return ((d, 3 * d), (d, f), (f, d))  # c_attn, c_fc, the MLP's c_proj


def storage_mode(s: Setting, n: int, m: int, nonlinear: bool) -> str:
    """'project' or 'int8': what apply_prac stores for this input (prac_dist.core.cost decides)."""
    if nonlinear:
        return s.prac.nonlinear_storage
    return linear_storage_mode(s.prac.linear_storage, n, m, sum(s.prac.ranks(n)))


def _z(n: int, s: Setting, b: int, nonlinear: bool, m: int = 0) -> int:
    """Bytes per token of a compressed width-n input (m: a linear group's total output width)."""
    r = sum(s.prac.ranks(n, nonlinear))
    return stored_bytes_per_token(storage_mode(s, n, m, nonlinear), n, r, s.prac.storage_bits, b)


def _nl(n: int, s: Setting, b: int) -> int:
    """Bytes per token of a nonlinear layer's saved input under PRAC."""
    return _z(n, s, b, nonlinear=True) if s.prac.compress_nonlinear else n * b


def layer_saved_bytes_per_token(shape: ModelShape, s: Setting, b: int) -> Dict[str, int]:
    """Bytes per token one (not checkpointed) decoder layer saves, by module type."""
    d, f, h = shape.hidden, shape.ffn, shape.heads
    if shape.family == "llama":
        attn = b * (2 * d + 2 * shape.kv_dim) + 4 * h
        if not s.prac:
            return {"norm": 2 * (4 * d + b * d + _STAT), "linear_input": 2 * b * d, "attention": attn,
                    "mlp": 4 * b * f}
        return {"norm": 2 * (_STAT + _nl(d, s, b)), "linear_input": _linear_inputs(shape, s, b),
                "attention": attn, "mlp": 2 * _nl(f, s, b)}
    attn = 6 * b * d + 4 * h
    if not s.prac:
        return {"norm": 2 * (b * d + 2 * _STAT), "linear_input": 2 * b * d + b * f, "attention": attn,
                "mlp": 4 * b * f}
    return {"norm": 2 * (2 * _STAT + _nl(d, s, b)), "linear_input": _linear_inputs(shape, s, b),
            "attention": attn, "mlp": _nl(f, s, b)}


def _linear_inputs(shape: ModelShape, s: Setting, b: int) -> int:
    return sum(_z(n, s, b, False, m) for n, m in linear_groups(shape))


def _final_norm_per_token(shape: ModelShape, s: Setting, b: int) -> int:
    d = shape.hidden
    stats = _STAT if shape.family == "llama" else 2 * _STAT
    if s.prac:
        return stats + _nl(d, s, b)
    return 4 * d + b * d + _STAT if shape.family == "llama" else b * d + 2 * _STAT


def head_backward(shape: ModelShape, s: Setting, tokens: int, b: int) -> Optional[str]:
    """'store' or 'recompute': what the fused head runs on a micro-batch of `tokens` (None: HF's head).

    'auto' decides as prac_dist.loss.linear_cross_entropy does, on these bias-free heads.
    """
    mode = s.fused_loss_backward
    if mode != "auto":
        return mode
    return "store" if store_fits(tokens, shape.hidden, shape.vocab, b, bias=False) else "recompute"


def _head_per_token(shape: ModelShape, mode: Optional[str], b: int) -> int:
    if mode == "store":
        return b * shape.hidden  # dX
    if mode == "recompute":
        return b * shape.hidden + _INT64 + 4
    return b * shape.hidden + 4 * shape.vocab + _INT64


def basis_bytes(shape: ModelShape, s: Setting) -> int:
    """PRAC's bases, held from the first forward on: per projected input of width n, [Q1 | Q2] in float32
    (Q1 and Q2 are views of it): 4·n·(r1 + r2) bytes. No activation (no micro-batch in it), but allocated
    by a forward, where MemTracker counts them."""
    if s.prac is None:
        return 0
    widths = [(n, False) for n, m in linear_groups(shape) if storage_mode(s, n, m, nonlinear=False) == "project"]
    if s.prac.compress_nonlinear and s.prac.nonlinear_storage == "project":
        d, f = shape.hidden, shape.ffn
        nonlinear = (d, d, f, f) if shape.family == "llama" else (d, d, f)  # 2 norms; SwiGLU g, u / GELU input
        widths += [(n, True) for n in nonlinear]
    per_layer = sum(4 * n * sum(s.prac.ranks(n, nl)) for n, nl in widths)
    final = 4 * shape.hidden * sum(s.prac.ranks(shape.hidden, True)) if s.prac.compress_nonlinear and \
        s.prac.nonlinear_storage == "project" else 0
    return shape.layers * per_layer + final


def saved_bytes(shape: ModelShape, s: Setting, micro_batch: int, seq_len: int, b: int) -> Dict[str, int]:
    """Total bytes saved for backward by one forward + loss of a micro-batch, by component."""
    n = micro_batch * seq_len
    per_layer = layer_saved_bytes_per_token(shape, s, b)
    ckpt = s.checkpointed_layers(shape.layers)
    plain = shape.layers - ckpt
    out = {f"layers.{k}": plain * v * n for k, v in per_layer.items()}
    out["checkpointed_inputs"] = ckpt * b * shape.hidden * n
    out["embedding"] = _INT64 * n  # the input ids (the embedding's indices)
    out["final_norm"] = _final_norm_per_token(shape, s, b) * n
    mode = head_backward(shape, s, n, b)
    out["head"] = _head_per_token(shape, mode, b) * n
    # Store mode's float32 dW, held from the head's forward to its backward (see the module docstring).
    out["head_buffers"] = 4 * shape.vocab * shape.hidden if mode == "store" else 0
    # Batch-independent: LLaMA's rotary cos and sin (seq x head_dim each, one copy for all layers);
    # GPT-2's position ids. Plus the loss's scalar divisor.
    if shape.family == "llama":
        # cos/sin are saved by the rotary multiply of a layer that is not checkpointed.
        out["constant"] = 2 * seq_len * (shape.hidden // shape.heads) * b if plain else 0
    else:
        out["constant"] = _INT64 * seq_len
    out["constant"] += _INT64 if s.fused_loss_backward else 4
    if micro_batch == 1 and mode != "store":
        # The saved shifted labels are a view of the padded (seq + 1)-long ones: one row's slice is
        # contiguous, so neither HF's .contiguous() nor the fused head's reshape copies it.
        out["constant"] += _INT64
    return out
