"""prac_dist.distributed: every launcher's variables give the same DistEnv, and the compressors take
their rank once, at apply_prac, instead of reading the environment at each refresh."""

import pytest
import torch

from prac_dist import PRACConfig, apply_prac
from prac_dist.patching import get_prac_state
from prac_dist.distributed import discover_env, rank_world

_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                  "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
                  "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK",
                  "MV2_COMM_WORLD_LOCAL_SIZE", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS",
                  "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE")


@pytest.mark.parametrize("source,env", [
    ("torchrun", {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}),
    ("openmpi", {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                 "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}),
    ("mvapich", {"MV2_COMM_WORLD_RANK": "5", "MV2_COMM_WORLD_SIZE": "8", "MV2_COMM_WORLD_LOCAL_RANK": "1",
                 "MV2_COMM_WORLD_LOCAL_SIZE": "4"}),
    ("mpich", {"PMI_RANK": "5", "PMI_SIZE": "8", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "4"}),
    ("slurm", {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "4"}),
])
def test_each_launcher_gives_rank_world_and_local_rank(source, env):
    got = discover_env({**env, "MASTER_ADDR": "head", "MASTER_PORT": "4321"})
    assert (got.rank, got.world_size, got.local_rank, got.local_world_size, got.source) == (5, 8, 1, 4, source)
    assert (got.master_addr, got.master_port) == ("head", 4321)


def test_mpich_world_size_is_seen_even_with_slurm_around():
    # Under MPICH/Intel MPI the FSDP engine used to see world size 1 while the trainer loop saw W.
    env = discover_env({"PMI_RANK": "3", "PMI_SIZE": "4", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
    assert (env.rank, env.world_size, env.source) == (3, 4, "mpich")


def test_rank_world_reads_the_environment_before_any_process_group(monkeypatch):
    for var in _LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    assert rank_world() == (0, 1)
    monkeypatch.setenv("PMI_RANK", "2")
    monkeypatch.setenv("PMI_SIZE", "3")
    assert rank_world() == (2, 3)


def _q2s(model):
    return {name: c.q2.clone() for name, c in get_prac_state(model).compressors.items() if c.q2 is not None}


def test_compressors_take_their_rank_at_apply_prac(monkeypatch, make_llama):
    for var in _LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    cfg = PRACConfig(seed=3, per_rank_random=True)

    def patched_as(rank, refresh_env_rank):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        model = apply_prac(make_llama(), cfg)
        assert {c.dp_rank for c in get_prac_state(model).compressors.values()} == {rank}
        monkeypatch.setenv("RANK", str(refresh_env_rank))  # what a refresh would read if it asked the env
        model(input_ids=ids, labels=ids).loss.backward()  # the first forward refreshes (draws Q2)
        return _q2s(model)

    as_one = patched_as(1, refresh_env_rank=1)
    moved = patched_as(1, refresh_env_rank=0)
    as_zero = patched_as(0, refresh_env_rank=0)
    assert as_one and as_one.keys() == moved.keys() == as_zero.keys()
    assert all(torch.equal(as_one[k], moved[k]) for k in as_one)  # the env at refresh time is not read
    assert all(not torch.equal(as_one[k], as_zero[k]) for k in as_one)  # and the rank does seed Q2
