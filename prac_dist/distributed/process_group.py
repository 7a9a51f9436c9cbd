"""The default process group and this rank's device, from the launcher's environment (env.py)."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Optional, Tuple

import torch
import torch.distributed as dist

from prac_dist.distributed.env import DistEnv, discover_env

__all__ = ["init_distributed", "close_distributed"]


def init_distributed(env: Optional[DistEnv] = None, backend: Optional[str] = None,
                     timeout_s: float = 1800.0) -> Tuple[DistEnv, torch.device]:
    """Create the default process group (if none exists) and return (env, this rank's device).

    CUDA: the device is set from LOCAL_RANK *before* init_process_group, so NCCL
    binds each rank to its own GPU instead of all ranks to GPU 0. CPU: gloo.
    """
    env = discover_env() if env is None else env
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        if env.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={env.local_rank} but this node has {torch.cuda.device_count()} CUDA devices")
        torch.cuda.set_device(env.local_rank)
        device = torch.device("cuda", env.local_rank)
    else:
        device = torch.device("cpu")
    if dist.is_initialized():
        return env, device
    backend = backend or ("nccl" if use_cuda else "gloo")
    timeout = timedelta(seconds=timeout_s)
    if env.world_size == 1 and "MASTER_ADDR" not in os.environ:
        # A single process needs no rendezvous: an in-memory store avoids claiming a port
        # (two single-process jobs on one machine would otherwise collide on 29500).
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    else:
        # env:// reads these four; fill in what SLURM/OpenMPI discovery derived, never override a set value.
        os.environ.setdefault("MASTER_ADDR", env.master_addr)
        os.environ.setdefault("MASTER_PORT", str(env.master_port))
        os.environ.setdefault("RANK", str(env.rank))
        os.environ.setdefault("WORLD_SIZE", str(env.world_size))
        dist.init_process_group(backend, init_method="env://", rank=env.rank, world_size=env.world_size,
                                timeout=timeout)
    return env, device


def close_distributed() -> None:
    """Destroy the default process group once every rank has reached this point.

    Without the barrier the first rank to finish tears down its gloo pairs while a peer
    still has a collective in flight to it; the peer's gloo thread then dies with
    "terminate called without an active exception" (SIGABRT) and the job fails after
    its work is done.
    """
    if not dist.is_initialized():
        return
    if dist.get_world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()
