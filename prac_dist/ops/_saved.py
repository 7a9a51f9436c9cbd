"""Saving a nonlinear layer's input: itself (lean, exact) or PRAC-compressed (the paper's setting)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from prac_dist.core.subspace import Compressor


def prepare(x: torch.Tensor, comp: Optional[Compressor]) -> Optional[torch.Tensor]:
    """Before an autograd.Function that compresses x in its forward: refresh comp's bases if due and take
    its next rounding key (None when it does not round). Done outside the Function because torch.compile
    traces its forward as a pure subgraph: the refresh's eager code and the counter's in-place add go here."""
    if comp is None:
        return None
    with torch.no_grad():
        comp.refresh(x.detach().reshape(-1, x.shape[-1]))
        return comp.next_seed() if comp.rounds else None


def stored_input(x: torch.Tensor, comp: Optional[Compressor]) -> Tuple[torch.Tensor, ...]:
    """What to save for backward: (x,) or its compressed form. Call under the training forward."""
    if comp is None or not torch.is_grad_enabled():
        return (x,)
    with torch.no_grad():
        x2d = x.detach().reshape(-1, x.shape[-1])
        comp.refresh(x2d)
        return comp.compress(x2d)


def restored_input(saved: Tuple[torch.Tensor, ...], comp: Optional[Compressor], shape, dtype) -> torch.Tensor:
    """The saved input back: exact, or X~ = Z [Q1 | Q2]ᵀ (unbiased, N x n, lives only in backward)."""
    if comp is None:
        return saved[0]
    return comp.decompress(saved, dtype).reshape(shape)
