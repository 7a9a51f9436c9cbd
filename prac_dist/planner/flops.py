"""FLOPs per training step (forward, loss, backward) as formulas of the shape: what each setting costs.

Counted the way benchmarks/compute/compute.py counts (torch.utils.flop_counter.FlopCounterMode: matmuls and
attention, plus QR 2mn² and eigh 9n³), so the two can be held to each other (tests/planner):

  decoder layer   6·N·P (P: the layer's linear weights; forward, dX, dW) + attention 14·B·S²·d
                  (torch's SDPA formula: 4 forward, 10 backward, counted without the causal half)
  checkpointed    + its forward again, less the last linear's (down_proj / c_proj): torch's
                  non-reentrant checkpoint stops the recompute at the last tensor backward needs
  PRAC            per linear group, prac_dist.core.cost: projection_extra_flops where it projects
                  (int8 storage adds no matmul); a projected nonlinear input (nonlinear_storage=
                  'project') adds Z = X·Q forward and X~ = Z·Qᵀ backward (4·N·n·r); each projected
                  basis's refresh (cost.refresh_flops) once per T1 steps of its PRACConfig interval
                  (principal_update_interval; nonlinear_principal_update_interval), amortised: the
                  steady rate. An 'early_dense' schedule adds log2(T1) refreshes per run, not per
                  step (benchmarks/quality/nonlinear_refresh.py counts them over a run length);
                  'drift' as many as the data triggers (benchmarks/quality/convergence.py records them)
  head            6·N·d·V for HF's head and the fused loss's backward='store'; 8·N·d·V when the
                  fused loss recomputes the logits ('recompute'; 'auto' where store_fits says no)
"""

from __future__ import annotations

from typing import Dict

from prac_dist.core.cost import projection_extra_flops, refresh_flops

from .activations import Setting, head_backward, linear_groups, storage_mode
from prac_dist.models.shapes import ModelShape

__all__ = ["step_flops"]


def _nonlinear_inputs(shape: ModelShape):
    """Widths of one layer's norm and activation inputs PRAC compresses (compress_nonlinear)."""
    d, f = shape.hidden, shape.ffn
    return (d, d, f, f) if shape.family == "llama" else (d, d, f)  # 2 norms; SwiGLU g and u / GELU input


def _prac_layer(shape: ModelShape, s: Setting, tokens: int) -> Dict[str, int]:
    """Extra FLOPs PRAC adds to one layer per step, their forward part (Z = X·Q, what a checkpointed
    layer's recompute repeats), its refreshes (all bases due) and those per step (each over its interval)."""
    c = s.prac
    extra = again = refresh = per_step = 0
    for n, m in linear_groups(shape):
        if storage_mode(s, n, m, nonlinear=False) == "project":
            r1, r2 = c.ranks(n)
            extra += projection_extra_flops(tokens, n, m, r1 + r2)
            again += 2 * tokens * n * (r1 + r2)
            one = refresh_flops(tokens, n, r1, r2)
            refresh += one
            per_step += one / c.principal_update_interval
    if _projects_nonlinear(s):
        for n in _nonlinear_inputs(shape):
            r1, r2 = c.ranks(n, nonlinear=True)
            extra += 4 * tokens * n * (r1 + r2)
            again += 2 * tokens * n * (r1 + r2)
            one = refresh_flops(tokens, n, r1, r2)
            refresh += one
            per_step += one / c.nonlinear_principal_update_interval
    return {"extra": extra, "again": again, "refresh": refresh, "refresh_per_step": per_step}


def _projects_nonlinear(s: Setting) -> bool:
    return s.prac.compress_nonlinear and s.prac.nonlinear_storage == "project"


def _layer_forward(shape: ModelShape, batch: int, seq: int) -> int:
    n = batch * seq
    weights = sum(n_in * m for n_in, m in _all_linears(shape))
    return 2 * n * weights + 4 * batch * seq * seq * shape.hidden


def _all_linears(shape: ModelShape):
    d = shape.hidden
    return tuple(linear_groups(shape)) + ((d, d),)  # plus the attention output projection


def step_flops(shape: ModelShape, s: Setting, micro_batch: int, seq_len: int, b: int) -> Dict[str, float]:
    """FLOPs of one training step of a micro-batch: decoder, head, amortised refresh and total.

    b: bytes per element of the model dtype (the fused loss's backward='auto' decides by bytes).
    """
    n = micro_batch * seq_len
    d, f, v = shape.hidden, shape.ffn, shape.vocab
    forward = _layer_forward(shape, micro_batch, seq_len)
    attention_fwd = 4 * micro_batch * seq_len * seq_len * d
    layer = 3 * (forward - attention_fwd) + 14 * micro_batch * seq_len * seq_len * d
    ckpt = s.checkpointed_layers(shape.layers)
    last_linear = 2 * n * f * d  # down_proj / c_proj: not recomputed
    decoder = shape.layers * layer + ckpt * (forward - last_linear)
    refresh = amortised = 0
    head = 6 * n * d * v
    if head_backward(shape, s, n, b) == "recompute":
        head = 8 * n * d * v
    if s.prac:
        extra = _prac_layer(shape, s, n)
        # A checkpointed layer projects its inputs again in the recompute.
        decoder += shape.layers * extra["extra"] + ckpt * extra["again"]
        refresh = shape.layers * extra["refresh"]
        amortised = shape.layers * extra["refresh_per_step"]
        if _projects_nonlinear(s):  # the final norm's input
            r1, r2 = s.prac.ranks(d, nonlinear=True)
            head += 4 * n * d * (r1 + r2)
            refresh += refresh_flops(n, d, r1, r2)
            amortised += refresh_flops(n, d, r1, r2) / s.prac.nonlinear_principal_update_interval
    return {"decoder": decoder, "head": head, "refresh": refresh, "refresh_per_step": amortised,
            "total": decoder + head + amortised}
