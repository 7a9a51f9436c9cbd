"""Distributed checkpoints of an FSDP2 + PRAC job: model, optimizer, scheduler, PRAC, RNG.

Layout of a checkpoint directory:

    model_optim/            torch.distributed.checkpoint (DCP): sharded model + optimizer state;
                            each rank writes its own shards, any world size can read them back
    prac_rank<RRRRR>.pt     per-rank PRAC state (Q1 is computed from each rank's own batch, Q2 is
                            drawn per rank): prac_state.py's format, the one DeepSpeed,
                            the HF Trainer and Accelerate write too; another world size is refused
    rng_rank<RRRRR>.pt      per-rank RNG state (rng.py: torch, CUDA, Python, NumPy)
    trainer.pt              rank 0: scheduler state, world size, the caller's `extra`; written last,
                            so its presence marks a complete checkpoint

prac_dist.fsdp exports save_checkpoint / load_checkpoint; every file is read with weights_only=True
(files.py), so `extra` holds tensors, numbers, strings, None and containers of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from prac_dist.checkpoint.files import CheckpointError, CorruptCheckpoint, read_file, write_file
from prac_dist.checkpoint.prac_state import load_prac_state, save_prac_state
from prac_dist.checkpoint.rng import rng_state, set_rng_state
from prac_dist.distributed.env import rank_world

__all__ = ["save_checkpoint", "load_checkpoint"]

_FORMAT = 2  # 2: the RNG file holds rng.py's snapshot; 1 (torch and CUDA tensors only) still loads


def save_checkpoint(path, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                    scheduler: Optional[Any] = None, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Every rank calls this with the same `path` (a shared file system across nodes)."""
    from prac_dist import is_prac_model

    path = Path(path)
    rank, world = rank_world()
    if rank == 0:
        path.mkdir(parents=True, exist_ok=True)
        (path / "trainer.pt").unlink(missing_ok=True)  # an overwritten checkpoint is incomplete until the end
    _barrier()
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    dcp.save(state, checkpoint_id=str(path / "model_optim"))
    has_prac = is_prac_model(model)
    if has_prac:
        save_prac_state(model, path)
    write_file({"format": _FORMAT, "rng": rng_state()}, _rng_file(path, rank))
    _barrier()
    if rank == 0:
        write_file({"format": _FORMAT, "world_size": world, "has_prac": has_prac,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "extra": dict(extra or {})}, path / "trainer.pt")
    _barrier()
    return path


def load_checkpoint(path, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                    scheduler: Optional[Any] = None) -> Dict[str, Any]:
    """Restore what save_checkpoint wrote into an identically built model/optimizer; returns `extra`.

    Model and optimizer reshard to any world size; the per-rank PRAC state needs the world size
    it was saved with (rank r's principal subspaces came from rank r's data). Anything unreadable,
    missing or mismatched is a CheckpointError naming the path.
    """
    from prac_dist import is_prac_model

    path = Path(path)
    rank, world = rank_world()
    trainer_file = path / "trainer.pt"
    if not trainer_file.is_file():
        raise CorruptCheckpoint(f"checkpoint {path} is incomplete or missing: no trainer.pt "
                              f"(save_checkpoint writes it last)")
    trainer = read_file(trainer_file)
    if trainer["has_prac"] != is_prac_model(model):
        saved = "has" if trainer["has_prac"] else "has no"
        now = "is" if is_prac_model(model) else "is not"
        raise CheckpointError(f"checkpoint {path} {saved} PRAC state but the model {now} PRAC-patched: "
                              f"build the model the way the checkpointed run did")
    if trainer["has_prac"] and trainer["world_size"] != world:
        raise CheckpointError(f"checkpoint {path}: PRAC state was saved by {trainer['world_size']} ranks but this "
                              f"job has world size {world}: resume PRAC runs with the same number of ranks")
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    try:
        dcp.load(state, checkpoint_id=str(path / "model_optim"))
    except Exception as exc:  # DCP wraps per-rank failures in CheckpointException: name the folder
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CorruptCheckpoint(f"{path / 'model_optim'}: unreadable ({type(exc).__name__}: {first[:160]})") from None
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])
    if scheduler is not None and trainer["scheduler"] is not None:
        scheduler.load_state_dict(trainer["scheduler"])
    if trainer["has_prac"]:
        load_prac_state(model, path)
    # Without PRAC a job may resume on another world size: ranks beyond the saved ones keep their RNG.
    if _rng_file(path, rank).is_file():
        per_rank = read_file(_rng_file(path, rank))
        if isinstance(per_rank["rng"], torch.Tensor):  # format 1: torch's and the current CUDA device's only
            torch.set_rng_state(per_rank["rng"])
            if per_rank.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(per_rank["cuda_rng"])
        else:
            set_rng_state(per_rank["rng"])
    _barrier()
    return trainer["extra"]


def _rng_file(path: Path, rank: int) -> Path:
    return path / f"rng_rank{rank:05d}.pt"


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
