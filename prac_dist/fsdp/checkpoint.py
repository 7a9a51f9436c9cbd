"""Distributed checkpoints of an FSDP2 + PRAC job: model, optimizer, scheduler, PRAC, RNG.

Layout of a checkpoint directory:

    model_optim/            torch.distributed.checkpoint (DCP): sharded model + optimizer state;
                            each rank writes its own shards, any world size can read them back
    rank{r}.pt              per-rank state that differs between ranks: PRAC (Q1 is computed from
                            each rank's own batch, Q2 is drawn per rank) and the torch RNG state
    trainer.pt              rank 0: scheduler state, world size, the caller's `extra`; written last,
                            so its presence marks a complete checkpoint
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

__all__ = ["save_checkpoint", "load_checkpoint"]

_FORMAT = 1


def save_checkpoint(path, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                    scheduler: Optional[Any] = None, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Every rank calls this with the same `path` (a shared file system across nodes)."""
    path = Path(path)
    rank, world = _rank_world()
    if rank == 0:
        path.mkdir(parents=True, exist_ok=True)
        (path / "trainer.pt").unlink(missing_ok=True)  # an overwritten checkpoint is incomplete until the end
    _barrier()
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    dcp.save(state, checkpoint_id=str(path / "model_optim"))
    prac = _prac_state(model)
    torch.save({"format": _FORMAT, "world_size": world, "prac": prac,
                "rng": torch.get_rng_state(), "cuda_rng": _cuda_rng()}, path / f"rank{rank}.pt")
    _barrier()
    if rank == 0:
        torch.save({"format": _FORMAT, "world_size": world, "has_prac": prac is not None,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "extra": dict(extra or {})}, path / "trainer.pt")
    _barrier()
    return path


def load_checkpoint(path, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                    scheduler: Optional[Any] = None) -> Dict[str, Any]:
    """Restore what save_checkpoint wrote into an identically built model/optimizer; returns `extra`.

    Model and optimizer reshard to any world size; the per-rank PRAC state needs the world size
    it was saved with (rank r's principal subspaces came from rank r's data).
    """
    path = Path(path)
    rank, world = _rank_world()
    trainer_file, rank_file = path / "trainer.pt", path / f"rank{rank}.pt"
    if not trainer_file.is_file():
        raise ValueError(f"checkpoint {str(path)!r} is incomplete or missing: no trainer.pt "
                         f"(save_checkpoint writes it last)")
    trainer = torch.load(trainer_file, map_location="cpu", weights_only=False)
    if trainer["has_prac"] and trainer["world_size"] != world:
        raise ValueError(f"checkpoint {str(path)!r} holds PRAC state of {trainer['world_size']} ranks but this job "
                         f"has world_size={world}: resume PRAC runs with the same number of ranks")
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(path / "model_optim"))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])
    if scheduler is not None and trainer["scheduler"] is not None:
        scheduler.load_state_dict(trainer["scheduler"])
    # Without PRAC a job may resume on another world size: ranks beyond the saved ones keep their RNG.
    per_rank = torch.load(rank_file, map_location="cpu", weights_only=False) if rank_file.is_file() else None
    if per_rank is not None:
        _load_prac_state(model, per_rank["prac"], rank_file)
        torch.set_rng_state(per_rank["rng"])
        if per_rank["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(per_rank["cuda_rng"])
    _barrier()
    return trainer["extra"]


def _prac_state(model: nn.Module) -> Optional[Dict[str, Any]]:
    from prac_dist import is_prac_model, prac_state_dict

    return prac_state_dict(model) if is_prac_model(model) else None


def _load_prac_state(model: nn.Module, state: Optional[Dict[str, Any]], where: Path) -> None:
    from prac_dist import is_prac_model, load_prac_state_dict

    if is_prac_model(model) != (state is not None):
        saved = "has" if state is not None else "has no"
        now = "is" if is_prac_model(model) else "is not"
        raise ValueError(f"{str(where)!r} {saved} PRAC state but the model {now} PRAC-patched: "
                         f"build the model the way the checkpointed run did")
    if state is not None:
        load_prac_state_dict(model, state)


def _cuda_rng():
    return torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None


def _rank_world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
