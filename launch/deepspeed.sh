#!/usr/bin/env bash
# Launch prac-train with DeepSpeed's launcher (`prac-train --deepspeed DS_CONFIG`).
#
#   launch/deepspeed.sh [--dry-run] [prac-train arguments...]
#
# Settings (environment, default in brackets):
#   NNODES          nodes to use [1]
#   NPROC_PER_NODE  ranks per node [GPUs seen by nvidia-smi, or 1]
#   HOSTFILE        DeepSpeed hostfile, lines `host slots=N` [none: this node only];
#                   see launch/hostfile.example
#   MASTER_ADDR     address of the first node, reachable from every node [127.0.0.1]
#   MASTER_PORT     [29500]
#   DS_LAUNCHER     multi-node runner: pdsh | openmpi | mvapich | slurm ... [pdsh]
#   NODE_RANK       with DS_NO_SSH=1: this node's index in HOSTFILE [$SLURM_NODEID or 0]
#   DS_NO_SSH       1: start only this node's ranks (run the script once per node, e.g.
#                   under srun); 0: start every node from here over ssh [0]
#   CONFIG          prac-train YAML [configs/train/llama_tiny.yaml]
#   DS_CONFIG       DeepSpeed JSON [configs/ds/zero2.json]
#   PYTHON          interpreter, an absolute path so ssh'd nodes find it [python3's sys.executable]
# On CPU set DS_ACCELERATOR=cpu (ranks talk over gloo).
#
# What reaches the other nodes: with DS_NO_SSH=0 the runner starts them over ssh with a
# fresh environment plus the variables named NCCL* (CUDA accelerator), PYTHON*, UCX*, MV2*
# and MLFLOW* of this shell, plus every NAME=value line of .deepspeed_env in $HOME or the
# working directory (DS_ENV_FILE renames that file). Put OMP_NUM_THREADS, DS_ACCELERATOR,
# HF_HOME... there. With DS_NO_SSH=1 each node keeps the environment it was started with.
set -euo pipefail

dry_run=0
if [[ ${1:-} == --dry-run ]]; then
    dry_run=1
    shift
fi

default_nproc() {
    local n=0
    if command -v nvidia-smi >/dev/null 2>&1; then
        n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    fi
    if ((n > 0)); then echo "$n"; else echo 1; fi
}

NNODES=${NNODES:-1}
NPROC_PER_NODE=${NPROC_PER_NODE:-$(default_nproc)}
HOSTFILE=${HOSTFILE:-}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
DS_LAUNCHER=${DS_LAUNCHER:-pdsh}
NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
DS_NO_SSH=${DS_NO_SSH:-0}
CONFIG=${CONFIG:-configs/train/llama_tiny.yaml}
DS_CONFIG=${DS_CONFIG:-configs/ds/zero2.json}
PYTHON=${PYTHON:-$(python3 -c 'import sys; print(sys.executable)')}

for name in NNODES NPROC_PER_NODE MASTER_PORT; do
    if [[ ! ${!name} =~ ^[1-9][0-9]*$ ]]; then
        echo "deepspeed.sh: $name=${!name} is not a positive integer" >&2
        exit 2
    fi
done
if [[ $DS_NO_SSH != 0 && $DS_NO_SSH != 1 ]]; then
    echo "deepspeed.sh: DS_NO_SSH=$DS_NO_SSH is not 0 or 1" >&2
    exit 2
fi
if ((NNODES > 1)) && [[ -z $HOSTFILE ]]; then
    echo "deepspeed.sh: NNODES=$NNODES needs HOSTFILE (lines 'host slots=N', see launch/hostfile.example)" >&2
    exit 2
fi
if [[ -n $HOSTFILE && ! -f $HOSTFILE ]]; then
    echo "deepspeed.sh: HOSTFILE=$HOSTFILE does not exist" >&2
    exit 2
fi

# `$PYTHON -m deepspeed.launcher.runner` is the `deepspeed` command itself; naming the
# interpreter keeps the runner, and the ranks it starts, in the same environment.
cmd=("$PYTHON" -m deepspeed.launcher.runner)
if [[ -n $HOSTFILE ]]; then
    cmd+=(--hostfile "$HOSTFILE" --launcher "$DS_LAUNCHER")
fi
cmd+=(--num_nodes "$NNODES" --num_gpus "$NPROC_PER_NODE"
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
if ((DS_NO_SSH)); then
    cmd+=(--no_ssh --node_rank "$NODE_RANK")
fi
cmd+=(--module prac_dist.train --config "$CONFIG" --deepspeed "$DS_CONFIG" "$@")

if ((dry_run)); then
    printf -v line '%q ' "${cmd[@]}"
    echo "${line% }"
    exit 0
fi
exec "${cmd[@]}"
