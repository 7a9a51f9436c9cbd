"""Each launch script really trains: two CPU ranks over gloo, the tiny LLaMA preset, 3 steps.

A run passes when the launcher exits 0 and rank 0's summary.json says the engine the script
selected ran all 3 steps with 2 ranks and a finite loss (the loop itself checks that the
engine's rank/world agree with the launcher's). "Two nodes" are two launcher processes on this
machine that meet over loopback: torchrun's c10d rendezvous, and DeepSpeed's --no_ssh mode
started once per node by slurm.sbatch through tests/launch/fakebin/srun.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from conftest import FAKEBIN, LAUNCH, REPO, base_env, free_port, read_summary, run_script

pytestmark = pytest.mark.slow

TIMEOUT = 420  # s per run; one run took 50-110 s on a 2-core box shared with other jobs


@pytest.fixture(scope="module")
def train_args(tmp_path_factory):
    """Tiny and short: 3 optimizer steps of 2 x 32 tokens per rank, one eval batch, no memory
    measurement (extra forwards the launch scripts do not need), and the first 20 kB of the bundled
    WikiText-2 (~5k tokens, 150 sequences) so that each rank does not tokenize 250k tokens first."""
    text = tmp_path_factory.mktemp("data") / "wikitext-head.txt"
    with open(REPO / "prac_dist" / "data" / "wikitext-2" / "valid.txt", encoding="utf-8") as f:
        text.write_text(f.read(20_000), encoding="utf-8")
    return ["--max-steps", "3", "--micro-batch-size", "2", "--seq-len", "32", "--eval-every", "0",
            "--set", "train.eval_batches=1", "--set", "train.measure_memory=false",
            "--set", f"data.train_files=[{text}]", "--set", f"data.eval_files=[{text}]"]


def run_env(**settings):
    return base_env(OMP_NUM_THREADS="1", PYTHON=sys.executable, **settings)


def check(result, out_dir, backend):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    summary = read_summary(out_dir)
    assert (summary["backend"], summary["world_size"], summary["steps"]) == (backend, 2, 3), summary
    assert math.isfinite(summary["final_train_loss"]), summary


def test_torchrun_fsdp_two_ranks(tmp_path, train_args):
    out = tmp_path / "out"
    result = run_script("torchrun.sh", [*train_args, "--output-dir", str(out)], run_env(NPROC_PER_NODE="2"),
                        timeout=TIMEOUT)
    check(result, out, "fsdp")


def test_torchrun_two_nodes_rendezvous_over_loopback(tmp_path, train_args):
    out = tmp_path / "out"
    # LOCAL_ADDR: both "nodes" are this machine, so the workers' MASTER_ADDR must be loopback too.
    env = run_env(NNODES="2", NPROC_PER_NODE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
                  RDZV_ID="loopback-test", LOCAL_ADDR="127.0.0.1")
    cmd = ["bash", str(LAUNCH / "torchrun.sh"), *train_args, "--output-dir", str(out)]
    nodes = [subprocess.Popen(cmd, env=env, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    try:
        outputs = [node.communicate(timeout=TIMEOUT) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, (stdout, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, f"exit {node.returncode}\n{stdout[-3000:]}\n{stderr[-6000:]}"
    summary = read_summary(out)
    assert (summary["backend"], summary["world_size"], summary["steps"]) == ("fsdp", 2, 3), summary


def test_deepspeed_zero2_two_ranks(tmp_path, train_args):
    out = tmp_path / "out"
    result = run_script("deepspeed.sh", [*train_args, "--output-dir", str(out)],
                        run_env(NPROC_PER_NODE="2", DS_ACCELERATOR="cpu", MASTER_PORT=str(free_port())),
                        timeout=TIMEOUT)
    check(result, out, "deepspeed")


def test_mpirun_deepspeed_two_ranks_found_through_mpi(tmp_path, train_args):
    out = tmp_path / "out"
    result = run_script("mpirun.sh", [*train_args, "--output-dir", str(out)],
                        run_env(NPROC_PER_NODE="2", DS_ACCELERATOR="cpu", MASTER_PORT=str(free_port())),
                        timeout=TIMEOUT)
    check(result, out, "deepspeed")


def test_slurm_deepspeed_two_nodes_without_srun(tmp_path, train_args):
    """slurm.sbatch's body with faked SLURM_* variables; SRUN/SCONTROL point at tests/launch/fakebin."""
    out = tmp_path / "out"
    env = run_env(LAUNCHER="deepspeed", SLURM_JOB_ID="91", SLURM_JOB_NODELIST="localhost,127.0.0.1",
                  SLURM_JOB_NUM_NODES="2", SLURM_GPUS_ON_NODE="1", SLURM_SUBMIT_DIR=str(tmp_path),
                  LAUNCH_DIR=str(LAUNCH), SRUN=str(FAKEBIN / "srun"), SCONTROL=str(FAKEBIN / "scontrol"),
                  DS_ACCELERATOR="cpu", MASTER_PORT=str(free_port()))
    result = run_script("slurm.sbatch", [*train_args, "--output-dir", str(out)], env, timeout=TIMEOUT)
    check(result, out, "deepspeed")
    assert not (tmp_path / ".hostfile-91").exists(), "slurm.sbatch left its hostfile behind"
