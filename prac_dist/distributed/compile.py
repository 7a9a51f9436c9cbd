"""torch.compile per decoder block: the unit torchtitan compiles, shared by the FSDP2 and one-process engines."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from prac_dist.models.layers import find_decoder_layers

__all__ = ["compile_blocks"]


def compile_blocks(model: nn.Module, backend: str, layers: Optional[nn.ModuleList] = None) -> None:
    """torch.compile each decoder block's forward in place (PRAC's refreshes and compression stay eager).

    Also turns off the Hugging Face KV cache (`config.use_cache`): training never reads it, and the
    DynamicCache's per-layer state is a Dynamo guard, so every block would compile once more (10 layers
    pass Dynamo's limit of 8 compiles per function and the rest of the blocks' cache code runs eagerly).
    """
    if not isinstance(backend, str) or not backend:
        raise ValueError(f"compile backend={backend!r}: accepted is a torch.compile backend name such as "
                         f"'inductor' or 'aot_eager'")
    if getattr(getattr(model, "config", None), "use_cache", None):
        model.config.use_cache = False
    for block in layers if layers is not None else find_decoder_layers(model):
        block.forward = torch.compile(block.forward, backend=backend)
