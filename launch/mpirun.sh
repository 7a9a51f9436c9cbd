#!/usr/bin/env bash
# Launch prac-train with Open MPI's mpirun; each rank learns its rank, the world size, its
# local rank and rank 0's address from mpi4py (deepspeed.init_distributed's MPI discovery).
#
#   launch/mpirun.sh [--dry-run] [prac-train arguments...]
#
# Settings (environment, default in brackets):
#   NNODES           nodes [1]; more than 1 needs HOSTFILE
#   NPROC_PER_NODE   ranks per node [GPUs seen by nvidia-smi, or 1]
#   HOSTFILE         Open MPI hostfile, lines `host slots=N` [none: this node only]
#   MASTER_PORT      port of the process-group store on rank 0's node [29500]
#   MASTER_ADDR      rank 0's node, for BACKEND=fsdp on several nodes [unset: DeepSpeed asks
#                    MPI; FSDP uses 127.0.0.1]
#   BACKEND          deepspeed | fsdp [deepspeed]
#   CONFIG           prac-train YAML [configs/train/llama_tiny.yaml]
#   DS_CONFIG        DeepSpeed JSON when BACKEND=deepspeed [configs/ds/zero2.json]
#   PYTHON           interpreter, an absolute path so remote nodes find it [python3's sys.executable]
#   MPI_EXPORT       more variable names to pass to the ranks (space separated) []
#   MPI_OVERSUBSCRIBE  1: allow more ranks than cores [1 without HOSTFILE, 0 with]
#   MPIRUN_ARGS      extra mpirun options, split on spaces (e.g. "--mca btl_tcp_if_include eth0") []
# As root, --allow-run-as-root is added (containers often run as root).
#
# What reaches the ranks: mpirun starts remote ranks with a fresh environment plus the
# variables passed with -x. This script passes, when set: PATH, LD_LIBRARY_PATH,
# PYTHONPATH, OMP_NUM_THREADS, DS_ACCELERATOR, TRITON_INTERPRET, HF_HOME, MASTER_ADDR, MASTER_PORT,
# every NCCL_*, UCX_*, TORCH_* and CUDA_* variable, and the names in MPI_EXPORT.
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
MASTER_PORT=${MASTER_PORT:-29500}
BACKEND=${BACKEND:-deepspeed}
CONFIG=${CONFIG:-configs/train/llama_tiny.yaml}
DS_CONFIG=${DS_CONFIG:-configs/ds/zero2.json}
PYTHON=${PYTHON:-$(python3 -c 'import sys; print(sys.executable)')}
MPI_EXPORT=${MPI_EXPORT:-}
if [[ -n $HOSTFILE ]]; then
    MPI_OVERSUBSCRIBE=${MPI_OVERSUBSCRIBE:-0}
else
    MPI_OVERSUBSCRIBE=${MPI_OVERSUBSCRIBE:-1}
fi
MPIRUN_ARGS=${MPIRUN_ARGS:-}

for name in NNODES NPROC_PER_NODE MASTER_PORT; do
    if [[ ! ${!name} =~ ^[1-9][0-9]*$ ]]; then
        echo "mpirun.sh: $name=${!name} is not a positive integer" >&2
        exit 2
    fi
done
if ((NNODES > 1)) && [[ -z $HOSTFILE ]]; then
    echo "mpirun.sh: NNODES=$NNODES needs HOSTFILE (lines 'host slots=N', see launch/hostfile.example)" >&2
    exit 2
fi
if [[ -n $HOSTFILE && ! -f $HOSTFILE ]]; then
    echo "mpirun.sh: HOSTFILE=$HOSTFILE does not exist" >&2
    exit 2
fi
case $BACKEND in
    deepspeed) backend_args=(--deepspeed "$DS_CONFIG") ;;
    fsdp) backend_args=(--fsdp) ;;
    *)
        echo "mpirun.sh: BACKEND=$BACKEND is not one of: deepspeed, fsdp" >&2
        exit 2
        ;;
esac

# MASTER_PORT is exported so that MPI discovery, which takes rank 0's address from MPI,
# uses the same port on every rank.
export MASTER_PORT
cmd=(mpirun -np "$((NNODES * NPROC_PER_NODE))")
if ((EUID == 0)); then
    cmd+=(--allow-run-as-root)
fi
if [[ $MPI_OVERSUBSCRIBE == 1 ]]; then
    cmd+=(--oversubscribe)
fi
if [[ -n $HOSTFILE ]]; then
    cmd+=(--hostfile "$HOSTFILE" --map-by "ppr:$NPROC_PER_NODE:node")
fi
# Open MPI binds each rank to one core by default; a training rank's data loader and
# intra-op threads need more than that.
cmd+=(--bind-to none)
read -r -a extra_mpirun <<<"$MPIRUN_ARGS"
cmd+=("${extra_mpirun[@]}")

read -r -a exported <<<"PATH LD_LIBRARY_PATH PYTHONPATH OMP_NUM_THREADS DS_ACCELERATOR TRITON_INTERPRET HF_HOME MASTER_ADDR MASTER_PORT $MPI_EXPORT"
while IFS='=' read -r name _; do
    exported+=("$name")
done < <(env | grep -E '^(NCCL|UCX|TORCH|CUDA)_[A-Za-z0-9_]*=' | sort)
declare -A seen=()
for name in "${exported[@]}"; do
    if [[ ! $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
        echo "mpirun.sh: MPI_EXPORT names '$name', which is not a variable name" >&2
        exit 2
    fi
    if [[ -n ${!name+set} && -z ${seen[$name]+set} ]]; then
        cmd+=(-x "$name")
        seen[$name]=1
    fi
done

cmd+=("$PYTHON" -m prac_dist.train --config "$CONFIG" "${backend_args[@]}" "$@")

if ((dry_run)); then
    printf -v line '%q ' "${cmd[@]}"
    echo "${line% }"
    exit 0
fi
exec "${cmd[@]}"
