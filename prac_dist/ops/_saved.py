"""Saving a nonlinear layer's input: itself (lean, exact) or PRAC-compressed (the paper's setting).

Every lean op saves its input the same way: `prepare` before the autograd.Function, `saved_input`
inside its forward, `restored_input` in its backward.
"""

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


def saved_input(x: torch.Tensor, comp: Optional[Compressor], seed: Optional[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
    """What the Function's forward saves for backward: (x,), or x's compressed form with `prepare`'s key."""
    if comp is None:
        return (x,)
    return comp.compress(x.reshape(-1, x.shape[-1]), seed)


def restored_input(saved: Tuple[torch.Tensor, ...], comp: Optional[Compressor], shape, dtype) -> torch.Tensor:
    """The saved input back: exact, or X~ = Z [Q1 | Q2]ᵀ (unbiased, N x n, lives only in backward)."""
    if comp is None:
        return saved[0]
    return comp.decompress(saved, dtype).reshape(shape)
