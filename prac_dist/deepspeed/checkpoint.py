"""PRAC state next to a DeepSpeed (or HF Trainer) checkpoint: one file per rank.

Each rank computes Q1 from its own batch and draws its own Q2, so the state
differs by rank and cannot go into the rank-0 `client_state`. Every rank writes
`<dir>/prac_rank<RRRRR>.pt` = {"format", "rank", "world_size", "state"}.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import torch
from torch import nn

__all__ = ["save_prac_state", "load_prac_state", "prac_state_path"]

logger = logging.getLogger(__name__)
_FORMAT = 1


def _rank_and_world() -> tuple:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def prac_state_path(directory: str, rank: Optional[int] = None) -> str:
    if rank is None:
        rank = _rank_and_world()[0]
    return os.path.join(os.fspath(directory), f"prac_rank{rank:05d}.pt")


def save_prac_state(model: nn.Module, directory: str) -> str:
    """Write this rank's PRAC state into `directory` (created if needed); returns the file path."""
    from prac_dist import prac_state_dict

    rank, world = _rank_and_world()
    os.makedirs(directory, exist_ok=True)
    path = prac_state_path(directory, rank)
    payload = {"format": _FORMAT, "rank": rank, "world_size": world, "state": prac_state_dict(model)}
    tmp = path + ".tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated file under the real name
    return path


def load_prac_state(model: nn.Module, directory: str, strict: bool = True) -> bool:
    """Restore this rank's PRAC state from `directory`; returns False when there is none to load.

    A run resumed on a different world size has no file for some ranks: those take
    rank 0's state (same step counter and draw indices; their own Q1 comes back at the
    next principal refresh), with a warning. With no PRAC file at all, `strict` raises.
    """
    from prac_dist import load_prac_state_dict

    rank, world = _rank_and_world()
    path = prac_state_path(directory, rank)
    if not os.path.isfile(path):
        fallback = prac_state_path(directory, 0)
        if not os.path.isfile(fallback):
            if strict:
                raise ValueError(
                    f"no PRAC state in checkpoint directory {directory!r} (expected {os.path.basename(path)}); "
                    f"it was saved without PRAC. Load it with load_module_only=True to start a fresh PRAC schedule"
                )
            return False
        logger.warning("PRAC: %s missing (world size changed?); rank %d resumes from rank 0's state", path, rank)
        path = fallback
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a prac_dist state file (format {_FORMAT} expected)")
    if payload["world_size"] != world:
        logger.warning("PRAC: %s was saved with world size %d, resuming with %d", path, payload["world_size"], world)
    load_prac_state_dict(model, payload["state"])
    return True
