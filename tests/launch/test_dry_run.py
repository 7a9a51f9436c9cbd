"""`--dry-run` prints the exact command each launch script would run; checked here string for string.

The environment is controlled (tests/launch/conftest.py: PATH and HOME only, plus the settings
under test), and fakebin's nvidia-smi reports 2 GPUs where a test checks the GPU-count default.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import base_env, run_script

PY = "/opt/venv/bin/python"  # PYTHON is given explicitly so the expected strings are fixed


def dry(name, *args, fakebin=False, **settings):
    result = run_script(name, ["--dry-run", *args], base_env(fakebin=fakebin, **settings))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def rejected(name, fakebin=False, **settings):
    result = run_script(name, ["--dry-run"], base_env(fakebin=fakebin, **settings))
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    return result.stderr


# ---- torchrun.sh ---------------------------------------------------------------------------------

def test_torchrun_single_node_defaults_to_fsdp_and_all_gpus():
    assert dry("torchrun.sh", fakebin=True) == (
        "torchrun --nnodes 1 --nproc-per-node 2 --standalone --no-python prac-train "
        "--config configs/train/llama_tiny.yaml --fsdp\n")


def test_torchrun_one_rank_without_gpus():
    # No nvidia-smi on PATH (fakebin left out): one rank.
    env = base_env(PATH="/usr/bin:/bin")
    result = run_script("torchrun.sh", ["--dry-run"], env)
    assert result.returncode == 0, result.stderr
    assert "--nproc-per-node 1 " in result.stdout


def test_torchrun_multi_node_rendezvous_and_forwarded_arguments():
    out = dry("torchrun.sh", "--max-steps", "5", "--set", "train.output_dir=runs/a b",
              NNODES="2", NPROC_PER_NODE="4", MASTER_ADDR="10.1.2.3", MASTER_PORT="29600",
              RDZV_ID="job7", CONFIG="configs/train/x.yaml")
    assert out == ("torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint 10.1.2.3:29600 "
                   "--rdzv-id job7 --no-python prac-train --config configs/train/x.yaml --fsdp "
                   "--max-steps 5 --set train.output_dir=runs/a\\ b\n")



def test_torchrun_local_addr_is_passed_only_when_set():
    out = dry("torchrun.sh", NNODES="2", NPROC_PER_NODE="1", MASTER_ADDR="10.1.2.3", RDZV_ID="j",
              LOCAL_ADDR="10.1.2.4")
    assert out == ("torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint 10.1.2.3:29500 "
                   "--rdzv-id j --local-addr 10.1.2.4 --no-python prac-train --config configs/train/llama_tiny.yaml "
                   "--fsdp\n")

def test_torchrun_rdzv_id_defaults_to_slurm_job_and_deepspeed_backend():
    out = dry("torchrun.sh", NNODES="3", NPROC_PER_NODE="1", SLURM_JOB_ID="4242", BACKEND="deepspeed",
              DS_CONFIG="configs/ds/zero3.json", PRAC_TRAIN="/opt/venv/bin/prac-train")
    assert out == ("torchrun --nnodes 3 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:29500 "
                   "--rdzv-id 4242 --no-python /opt/venv/bin/prac-train --config configs/train/llama_tiny.yaml "
                   "--deepspeed configs/ds/zero3.json\n")


@pytest.mark.parametrize("setting,message", [
    ({"BACKEND": "ddp"}, "torchrun.sh: BACKEND=ddp is not one of: fsdp, deepspeed\n"),
    ({"NNODES": "0"}, "torchrun.sh: NNODES=0 is not a positive integer\n"),
    ({"NPROC_PER_NODE": "two"}, "torchrun.sh: NPROC_PER_NODE=two is not a positive integer\n"),
])
def test_torchrun_rejects_bad_settings(setting, message):
    assert rejected("torchrun.sh", **setting) == message


# ---- deepspeed.sh --------------------------------------------------------------------------------

def test_deepspeed_single_node():
    assert dry("deepspeed.sh", "--max-steps", "3", fakebin=True, PYTHON=PY) == (
        f"{PY} -m deepspeed.launcher.runner --num_nodes 1 --num_gpus 2 --master_addr 127.0.0.1 "
        "--master_port 29500 --module prac_dist.train --config configs/train/llama_tiny.yaml "
        "--deepspeed configs/ds/zero2.json --max-steps 3\n")


def test_deepspeed_multi_node_over_ssh(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-0 slots=8\nnode-1 slots=8\n")
    out = dry("deepspeed.sh", PYTHON=PY, NNODES="2", NPROC_PER_NODE="8", HOSTFILE=str(hostfile),
              MASTER_ADDR="node-0", DS_CONFIG="configs/ds/zero3.json")
    assert out == (f"{PY} -m deepspeed.launcher.runner --hostfile {hostfile} --launcher pdsh --num_nodes 2 "
                   "--num_gpus 8 --master_addr node-0 --master_port 29500 --module prac_dist.train "
                   "--config configs/train/llama_tiny.yaml --deepspeed configs/ds/zero3.json\n")


def test_deepspeed_one_node_of_many_without_ssh(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("a slots=1\nb slots=1\n")
    out = dry("deepspeed.sh", PYTHON=PY, NNODES="2", NPROC_PER_NODE="1", HOSTFILE=str(hostfile),
              DS_NO_SSH="1", SLURM_NODEID="1", DS_LAUNCHER="openmpi")
    assert out == (f"{PY} -m deepspeed.launcher.runner --hostfile {hostfile} --launcher openmpi --num_nodes 2 "
                   "--num_gpus 1 --master_addr 127.0.0.1 --master_port 29500 --no_ssh --node_rank 1 "
                   "--module prac_dist.train --config configs/train/llama_tiny.yaml "
                   "--deepspeed configs/ds/zero2.json\n")
    # NODE_RANK wins over SLURM_NODEID
    out = dry("deepspeed.sh", PYTHON=PY, NNODES="2", NPROC_PER_NODE="1", HOSTFILE=str(hostfile),
              DS_NO_SSH="1", SLURM_NODEID="1", NODE_RANK="0")
    assert " --no_ssh --node_rank 0 " in out


def test_deepspeed_python_defaults_to_python3_interpreter():
    out = dry("deepspeed.sh", NPROC_PER_NODE="1")
    python3 = subprocess.run(["python3", "-c", "import sys; print(sys.executable)"], env=base_env(),
                             capture_output=True, text=True, check=True).stdout.strip()
    assert out.startswith(f"{python3} -m deepspeed.launcher.runner ")


def test_deepspeed_rejects_bad_settings(tmp_path):
    assert rejected("deepspeed.sh", NNODES="2") == (
        "deepspeed.sh: NNODES=2 needs HOSTFILE (lines 'host slots=N', see launch/hostfile.example)\n")
    missing = tmp_path / "nope"
    assert rejected("deepspeed.sh", HOSTFILE=str(missing)) == f"deepspeed.sh: HOSTFILE={missing} does not exist\n"
    assert rejected("deepspeed.sh", DS_NO_SSH="yes") == "deepspeed.sh: DS_NO_SSH=yes is not 0 or 1\n"
    assert rejected("deepspeed.sh", MASTER_PORT="-1") == "deepspeed.sh: MASTER_PORT=-1 is not a positive integer\n"


# ---- mpirun.sh -----------------------------------------------------------------------------------

def _root_flag() -> str:
    return "--allow-run-as-root " if os.geteuid() == 0 else ""


def test_mpirun_single_node_exports_what_ranks_need():
    out = dry("mpirun.sh", "--max-steps", "3", PYTHON=PY, NPROC_PER_NODE="2",
              OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", NCCL_DEBUG="INFO", NCCL_IB_DISABLE="1",
              MPI_EXPORT="HF_TOKEN_PATH OMP_NUM_THREADS", HF_TOKEN_PATH="/x")
    assert out == (f"mpirun -np 2 {_root_flag()}--oversubscribe --bind-to none -x PATH -x OMP_NUM_THREADS "
                   "-x DS_ACCELERATOR -x MASTER_PORT -x HF_TOKEN_PATH -x NCCL_DEBUG -x NCCL_IB_DISABLE "
                   f"{PY} -m prac_dist.train --config configs/train/llama_tiny.yaml "
                   "--deepspeed configs/ds/zero2.json --max-steps 3\n")


def test_mpirun_multi_node_hostfile(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-0 slots=8\nnode-1 slots=8\n")
    out = dry("mpirun.sh", PYTHON=PY, NNODES="2", NPROC_PER_NODE="8", HOSTFILE=str(hostfile), BACKEND="fsdp",
              MPIRUN_ARGS="--mca btl_tcp_if_include eth0")
    assert out == (f"mpirun -np 16 {_root_flag()}--hostfile {hostfile} --map-by ppr:8:node --bind-to none "
                   "--mca btl_tcp_if_include eth0 -x PATH -x MASTER_PORT "
                   f"{PY} -m prac_dist.train --config configs/train/llama_tiny.yaml --fsdp\n")


def test_mpirun_rejects_bad_settings():
    assert rejected("mpirun.sh", BACKEND="horovod") == "mpirun.sh: BACKEND=horovod is not one of: deepspeed, fsdp\n"
    assert rejected("mpirun.sh", MPI_EXPORT="OK BAD-NAME") == (
        "mpirun.sh: MPI_EXPORT names 'BAD-NAME', which is not a variable name\n")
    assert rejected("mpirun.sh", NNODES="2") == (
        "mpirun.sh: NNODES=2 needs HOSTFILE (lines 'host slots=N', see launch/hostfile.example)\n")


# ---- slurm.sbatch --------------------------------------------------------------------------------

SLURM = {"SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "gpu-a,gpu-b", "SLURM_JOB_NUM_NODES": "2",
         "SLURM_GPUS_ON_NODE": "8", "SLURM_SUBMIT_DIR": "/shared/prac"}


def test_slurm_torchrun_one_launcher_per_node():
    out = dry("slurm.sbatch", "--max-steps", "9", fakebin=True, **SLURM)
    assert out == ("env NNODES=2 NPROC_PER_NODE=8 MASTER_ADDR=gpu-a MASTER_PORT=29500 RDZV_ID=77 "
                   "srun --nodes 2 --ntasks 2 --ntasks-per-node 1 --kill-on-bad-exit=1 "
                   "/shared/prac/launch/torchrun.sh --max-steps 9\n")


def test_slurm_deepspeed_without_ssh_and_hostfile_in_submit_dir():
    out = dry("slurm.sbatch", fakebin=True, LAUNCHER="deepspeed", MASTER_PORT="29511", **SLURM)
    assert out == ("env NNODES=2 NPROC_PER_NODE=8 MASTER_ADDR=gpu-a MASTER_PORT=29511 RDZV_ID=77 "
                   "HOSTFILE=/shared/prac/.hostfile-77 DS_NO_SSH=1 "
                   "srun --nodes 2 --ntasks 2 --ntasks-per-node 1 --kill-on-bad-exit=1 "
                   "/shared/prac/launch/deepspeed.sh\n")


def test_slurm_needs_an_allocation_and_a_known_launcher():
    assert rejected("slurm.sbatch", fakebin=True) == (
        "slurm.sbatch: SLURM_JOB_ID and SLURM_JOB_NODELIST are not set: submit it with sbatch "
        "(or run it inside salloc)\n")
    assert rejected("slurm.sbatch", fakebin=True, LAUNCHER="mpirun", **SLURM) == (
        "slurm.sbatch: LAUNCHER=mpirun is not one of: torchrun, deepspeed\n")
