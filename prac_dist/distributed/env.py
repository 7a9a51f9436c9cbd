"""Where this process sits in the job: rank, world size, local rank, rendezvous address.

The one place that reads launcher variables; the compressors, both engines, the checkpoints and
the trainer ask here. The order of precedence is the order in which launchers wrap
each other: torchrun / the deepspeed launcher set RANK, WORLD_SIZE and LOCAL_RANK explicitly;
`mpirun` sets OMPI_COMM_WORLD_* (Open MPI), MV2_COMM_WORLD_* (MVAPICH) or PMI_* (MPICH, Intel
MPI); `srun` sets SLURM_*. A SLURM job that runs torchrun inside `srun` therefore reports
torchrun's values, which are the right ones (SLURM counts tasks, torchrun counts ranks).
No torch import at module level: reading the environment needs none.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

__all__ = ["DistEnv", "discover_env", "rank_world", "first_slurm_host"]

_DEFAULT_PORT = 29500

# (rank, world size, local rank, local world size) variable names per launcher, in precedence order.
# MPICH's and Intel MPI's Hydra launcher set PMI_RANK/PMI_SIZE and MPI_LOCALRANKID/MPI_LOCALNRANKS;
# MVAPICH's mpirun_rsh sets MV2_COMM_WORLD_*. SLURM comes last: `srun` wraps the other launchers.
_SOURCES = (
    ("torchrun", ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")),
    ("openmpi", ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                 "OMPI_COMM_WORLD_LOCAL_SIZE")),
    ("mvapich", ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK",
                 "MV2_COMM_WORLD_LOCAL_SIZE")),
    ("mpich", ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS")),
    ("slurm", ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE")),
)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    """Global rank of this process, 0 <= rank < world_size."""
    world_size: int
    """Number of processes in the job."""
    local_rank: int
    """Rank on this node; picks the CUDA device."""
    local_world_size: int
    """Processes on this node."""
    master_addr: str
    """Host of rank 0's rendezvous store (MASTER_ADDR)."""
    master_port: int
    """Port of rank 0's rendezvous store (MASTER_PORT)."""
    source: str
    """Which launcher's variables were read: 'torchrun', 'openmpi', 'mvapich', 'mpich', 'slurm' or 'single'."""

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def discover_env(environ: Optional[Mapping[str, str]] = None) -> DistEnv:
    """Read the launcher's variables (torchrun > OpenMPI > MVAPICH > MPICH/Intel MPI > SLURM > single)."""
    env = os.environ if environ is None else environ
    for source, (rank_var, world_var, local_var, local_world_var) in _SOURCES:
        if rank_var in env and world_var in env:
            rank = _int(env, rank_var, minimum=0)
            world = _int(env, world_var, minimum=1)
            if rank >= world:
                raise ValueError(f"{rank_var}={rank} is not below {world_var}={world}: accepted is 0 <= rank < world size")
            local_rank = _int(env, local_var, minimum=0) if local_var in env else 0
            local_world = _local_world(env, local_world_var, world)
            addr, port = _master(env, source)
            return DistEnv(rank, world, local_rank, local_world, addr, port, source)
    return DistEnv(0, 1, 0, 1, env.get("MASTER_ADDR", "127.0.0.1"), _port(env), "single")


def rank_world() -> Tuple[int, int]:
    """(rank, world size): the default process group's when one exists, else the launcher's variables.

    Before init_process_group (apply_prac, argument checks) only the environment knows; after it the
    process group is the truth (DeepSpeed's mpi4py discovery may have set ranks no variable names).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    env = discover_env()
    return env.rank, env.world_size


def _int(env: Mapping[str, str], name: str, minimum: int) -> int:
    raw = env[name]
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer: accepted is an integer >= {minimum}") from None
    if value < minimum:
        raise ValueError(f"{name}={value} is out of range: accepted is an integer >= {minimum}")
    return value


def _local_world(env: Mapping[str, str], name: str, world: int) -> int:
    if name not in env:
        return world
    # SLURM writes e.g. "4(x2)" or "4,2" for heterogeneous allocations: the first count is this layout's.
    match = re.match(r"\s*(\d+)", env[name])
    if match is None:
        raise ValueError(f"{name}={env[name]!r} is not a count: accepted is an integer >= 1")
    return max(1, int(match.group(1)))


def _port(env: Mapping[str, str]) -> int:
    if "MASTER_PORT" in env:
        port = _int(env, "MASTER_PORT", minimum=1)
        if port > 65535:
            raise ValueError(f"MASTER_PORT={port} is out of range: accepted is 1..65535")
        return port
    return _DEFAULT_PORT


def _master(env: Mapping[str, str], source: str) -> Tuple[str, int]:
    addr = env.get("MASTER_ADDR")
    if addr is None and source == "slurm" and env.get("SLURM_JOB_NODELIST"):
        addr = first_slurm_host(env["SLURM_JOB_NODELIST"])
    if "MASTER_PORT" not in env and source == "slurm" and "SLURM_JOB_ID" in env:
        # Two jobs sharing a node must not share a port: derive it from the job id (range 20000..29999).
        job = _int(env, "SLURM_JOB_ID", minimum=0)
        return addr or "127.0.0.1", 20000 + job % 10000
    return addr or "127.0.0.1", _port(env)


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list, as `scontrol show hostnames | head -n1` prints it.

    'gpu[003-005,010],cpu1' -> 'gpu003'; 'node7' -> 'node7'.
    """
    first = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if first is None or not first.group(1):
        raise ValueError(f"SLURM_JOB_NODELIST={nodelist!r} is not a SLURM node list (e.g. 'node[01-04]')")
    prefix, ranges = first.group(1), first.group(3)
    if ranges is None:
        return prefix
    start = ranges.split(",")[0].split("-")[0]
    return prefix + start
