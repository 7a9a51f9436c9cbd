#!/usr/bin/env bash
# Launch prac-train with torchrun: one node, or one call per node with c10d rendezvous.
#
#   launch/torchrun.sh [--dry-run] [prac-train arguments...]
#
# Settings (environment, default in brackets):
#   NNODES          nodes in the job [1]; 1 = --standalone (free port picked by torchrun)
#   NPROC_PER_NODE  ranks per node [GPUs seen by nvidia-smi, or 1]
#   MASTER_ADDR     rendezvous host, reachable from every node [127.0.0.1]
#   MASTER_PORT     rendezvous port on MASTER_ADDR [29500]
#   RDZV_ID         job id, the same on every node [$SLURM_JOB_ID or prac]
#   LOCAL_ADDR      this node's address as the other nodes reach it [torchrun: the node's FQDN];
#                   set it where the hostname does not resolve to that address
#   BACKEND         fsdp | deepspeed [fsdp]
#   CONFIG          prac-train YAML [configs/train/llama_tiny.yaml]
#   DS_CONFIG       DeepSpeed JSON when BACKEND=deepspeed [configs/ds/zero2.json]
#   PRAC_TRAIN      training command [prac-train]
# Multi-node: run this script once on every node with the same NNODES, MASTER_ADDR,
# MASTER_PORT and RDZV_ID; torchrun assigns node ranks at rendezvous.
#
# What reaches the ranks: torchrun starts them on its own node with its own environment,
# so every variable set where this script runs (NCCL_*, OMP_NUM_THREADS, ...) reaches the
# ranks of that node and no other: set them on every node (srun and `docker run -e` do).
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
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
RDZV_ID=${RDZV_ID:-${SLURM_JOB_ID:-prac}}
BACKEND=${BACKEND:-fsdp}
CONFIG=${CONFIG:-configs/train/llama_tiny.yaml}
DS_CONFIG=${DS_CONFIG:-configs/ds/zero2.json}
PRAC_TRAIN=${PRAC_TRAIN:-prac-train}
LOCAL_ADDR=${LOCAL_ADDR:-}

for name in NNODES NPROC_PER_NODE MASTER_PORT; do
    if [[ ! ${!name} =~ ^[1-9][0-9]*$ ]]; then
        echo "torchrun.sh: $name=${!name} is not a positive integer" >&2
        exit 2
    fi
done

case $BACKEND in
    fsdp) backend_args=(--fsdp) ;;
    deepspeed) backend_args=(--deepspeed "$DS_CONFIG") ;;
    *)
        echo "torchrun.sh: BACKEND=$BACKEND is not one of: fsdp, deepspeed" >&2
        exit 2
        ;;
esac

cmd=(torchrun --nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE")
if ((NNODES == 1)); then
    cmd+=(--standalone)
else
    cmd+=(--rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "$RDZV_ID")
    # Rank 0's node address becomes every worker's MASTER_ADDR; torchrun's default is its FQDN.
    if [[ -n $LOCAL_ADDR ]]; then cmd+=(--local-addr "$LOCAL_ADDR"); fi
fi
cmd+=(--no-python "$PRAC_TRAIN" --config "$CONFIG" "${backend_args[@]}" "$@")

if ((dry_run)); then
    printf -v line '%q ' "${cmd[@]}"
    echo "${line% }"
    exit 0
fi
exec "${cmd[@]}"
