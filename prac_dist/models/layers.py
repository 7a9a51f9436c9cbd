"""Where a causal LM keeps its decoder blocks: the registry's `layers_path`, else a structural search.

FSDP2 shards each block and torch.compile compiles each block's forward; both find them here.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from prac_dist.models.registry import ARCHITECTURES, architecture_of

__all__ = ["find_decoder_layers"]


def find_decoder_layers(model: nn.Module, layers_path: Optional[str] = None) -> nn.ModuleList:
    """The model's ModuleList of decoder blocks (`model.model.layers`, `model.transformer.h`, ...).

    layers_path, else the registry's path for the model type, else (a family outside the registry, or a
    bare base model) the ModuleList of same-class blocks holding the most parameters.
    """
    arch = architecture_of(model)
    path = layers_path if layers_path is not None else arch.layers_path if arch is not None else None
    if path is not None:
        found = _get_path(model, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found
        if layers_path is not None:
            raise ValueError(f"layers_path={layers_path!r}: {type(model).__name__} has no non-empty "
                             f"nn.ModuleList there")
    found = _largest_block_list(model)
    if found is None:
        registered = sorted({a.layers_path for a in ARCHITECTURES.values()})
        raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}: not at a registered path "
                         f"{registered} and no nn.ModuleList of same-class blocks; "
                         f"pass layers_path='dotted.path.to.ModuleList'")
    return found


def _largest_block_list(model: nn.Module) -> Optional[nn.ModuleList]:
    best, best_params = None, 0
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        params = sum(p.numel() for p in module.parameters())
        if params > best_params:
            best, best_params = module, params
    return best


def _get_path(root: nn.Module, path: str):
    node = root
    for part in path.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node
