"""PRAC's per-rank state file, one format for every engine (DeepSpeed, FSDP2, HF Trainer, Accelerate).

Each rank computes Q1 from its own batch and draws its own Q2, so the state differs by rank and
cannot live in a rank-0 file or a resharded one. Every rank writes

    <dir>/prac_rank<RRRRR>.pt = {"format": 1, "rank": r, "world_size": W, "state": prac_state_dict(model)}

under a temporary name renamed into place (a crash never leaves a truncated file under the real name).

A different world size is refused, naming both sizes (`CheckpointError`): rank r's principal
subspaces came from rank r's data, and a new rank has no basis of its own to resume. Model and
optimizer state of either engine may reshard; to continue such a run on another world size, load
the weights alone (DeepSpeed `load_module_only=True`) and let PRAC start a fresh schedule.

Unreadable or truncated files are a `CorruptCheckpoint` naming the file, and a file whose pickle names
code an `UnsafeCheckpoint` (files.py): ConfigErrors, so prac-train prints one line and exits 2 (or, for a
damaged file, falls back to an older intact checkpoint).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from torch import nn

from prac_dist.checkpoint.files import CheckpointError, CorruptCheckpoint, read_file, write_file
from prac_dist.distributed.env import rank_world

__all__ = ["save_prac_state", "load_prac_state", "has_prac_state", "prac_state_path"]

_FORMAT = 1


def prac_state_path(directory, rank: Optional[int] = None) -> str:
    if rank is None:
        rank = rank_world()[0]
    return os.path.join(os.fspath(directory), f"prac_rank{rank:05d}.pt")


def save_prac_state(model: nn.Module, directory) -> str:
    """Write this rank's PRAC state into `directory` (created if needed); returns the file path."""
    from prac_dist import prac_state_dict

    rank, world = rank_world()
    os.makedirs(directory, exist_ok=True)
    path = prac_state_path(directory, rank)
    payload = {"format": _FORMAT, "rank": rank, "world_size": world, "state": prac_state_dict(model)}
    write_file(payload, path)
    return path


def has_prac_state(directory) -> bool:
    """Whether any rank wrote PRAC state into `directory`."""
    return os.path.isdir(directory) and any(n.startswith("prac_rank") and n.endswith(".pt")
                                            for n in os.listdir(directory))


def load_prac_state(model: nn.Module, directory, strict: bool = True) -> bool:
    """Restore this rank's PRAC state from `directory`; returns False when there is none (strict=False).

    Refuses (CheckpointError naming both sizes) state written by another world size.
    """
    from prac_dist import load_prac_state_dict

    rank, world = rank_world()
    path = prac_state_path(directory, rank)
    if not os.path.isfile(path):
        if not has_prac_state(directory):
            if strict:
                raise CheckpointError(
                    f"{os.fspath(directory)}: no PRAC state (expected {os.path.basename(path)}); it was saved "
                    f"without PRAC. Load the weights alone (load_module_only=True) to start a fresh PRAC schedule")
            return False
        first = prac_state_path(directory, 0)
        saved = _read_payload(first)["world_size"] if os.path.isfile(first) else None
        if saved != world:
            raise CheckpointError(_world_mismatch(directory, saved, world))
        raise CorruptCheckpoint(f"{path}: missing (rank {rank} of {world}; the checkpoint is incomplete)")
    payload = _read_payload(path)
    if payload["world_size"] != world:
        raise CheckpointError(_world_mismatch(directory, payload["world_size"], world))
    load_prac_state_dict(model, payload["state"])
    return True


def _read_payload(path: str) -> Dict[str, Any]:
    payload = read_file(path)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT or "state" not in payload:
        raise CorruptCheckpoint(f"{path}: not a prac_dist PRAC state file (format {_FORMAT} expected)")
    return payload


def _world_mismatch(directory, saved: Optional[int], world: int) -> str:
    saved_text = f"{saved} ranks" if saved is not None else "another number of ranks"
    return (f"{os.fspath(directory)}: PRAC state was saved by {saved_text} but this job has world size {world}: "
            f"each rank's bases come from its own data; resume with the same number of ranks, or load the "
            f"weights alone for a fresh PRAC schedule")
