#!/usr/bin/env bash
# Build docker/Dockerfile with podman against a local Debian base and run two-rank CPU
# trainings inside the image through the launch scripts.
#
#   bash .ci/container.sh
#
# No Docker engine and no image registry on the CI machines: the base image is made with
# debootstrap from the Debian mirror apt uses, and the CPU torch wheel that lies on the
# machine is handed to the build through the (git-ignored) .whl/ folder of the build context.
# Settings (environment): TORCH_WHEEL [/opt/wheels/torch-2.13.0+cpu-cp311-...whl],
# DEBIAN_MIRROR [the first Debian URI in /etc/apt/sources.list.d], IMAGE [localhost/prac-dist:ci],
# BASE_IMAGE [localhost/debian-base:bookworm, made when missing].
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$PWD
TORCH_WHEEL=${TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}
IMAGE=${IMAGE:-localhost/prac-dist:ci}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian-base:bookworm}
export CONTAINERS_CONF=$repo/docker/containers.conf
podman=(podman)
t_start=$SECONDS
phase_start=$SECONDS
timings=()
phase_done() {
    timings+=("$1 $((SECONDS - phase_start)) s")
    echo "container.sh: $1 done in $((SECONDS - phase_start)) s" >&2
    phase_start=$SECONDS
}

# ---- tools --------------------------------------------------------------------------------------
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || [[ -x /usr/sbin/runc ]] || missing+=(runc)
command -v debootstrap >/dev/null || [[ -x /usr/sbin/debootstrap ]] || missing+=(debootstrap)
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
phase_done "install podman/runc/debootstrap"

# ---- base image ---------------------------------------------------------------------------------
if ! "${podman[@]}" image exists "$BASE_IMAGE"; then
    mirror=${DEBIAN_MIRROR:-}
    if [[ -z $mirror ]]; then
        mirror=$(cat /etc/apt/sources.list.d/* /etc/apt/sources.list 2>/dev/null | grep -v '^[[:space:]]*#' \
            | grep -oE 'https?://[^[:space:]]*/debian/?([[:space:]]|$)' | head -n1 | tr -d '[:space:]' || true)
    fi
    mirror=${mirror:-http://deb.debian.org/debian}
    rootfs=$(mktemp -d /tmp/prac-debian-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    echo "container.sh: debootstrap bookworm from $mirror" >&2
    PATH=$PATH:/usr/sbin debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
    tar -C "$rootfs" -c . | "${podman[@]}" import - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
fi
phase_done "base image"

# ---- build --------------------------------------------------------------------------------------
if [[ ! -f $TORCH_WHEEL ]]; then
    echo "container.sh: no CPU torch wheel at TORCH_WHEEL=$TORCH_WHEEL (PyPI's torch is the CUDA build)" >&2
    exit 2
fi
mkdir -p .whl
wheel=.whl/$(basename "$TORCH_WHEEL")
[[ -f $wheel ]] || cp -l "$TORCH_WHEEL" "$wheel" 2>/dev/null || cp "$TORCH_WHEEL" "$wheel"
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg CPU_IMAGE=1 --build-arg "TORCH_SPEC=$wheel")
# A TLS-intercepting proxy between the machine and PyPI: give pip the machine's CA bundle.
ca_bundle=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
volumes=()
if [[ -f $ca_bundle ]]; then
    volumes=(--volume "$ca_bundle:/run/host-ca.crt:ro")
    build_args+=(--build-arg PIP_CERT=/run/host-ca.crt)
fi
"${podman[@]}" build --runtime runc --network host "${volumes[@]}" "${build_args[@]}" \
    -f docker/Dockerfile -t "$IMAGE" . >/tmp/prac-container-build.log 2>&1 || {
    tail -n 40 /tmp/prac-container-build.log >&2
    exit 1
}
phase_done "image build"

# ---- inside the image ---------------------------------------------------------------------------
start=("${podman[@]}" run --runtime runc --network host)
run=("${start[@]}" --rm)
"${run[@]}" --entrypoint pip "$IMAGE" check
"${run[@]}" "$IMAGE" --help >/dev/null

out=$(mktemp -d /tmp/prac-container-out.XXXXXX)
chmod 0777 "$out"
common=(-e OMP_NUM_THREADS=1 -e NPROC_PER_NODE=2 -v "$out:/out")
# measure_memory off: extra forwards the launch check does not need; the first 20 kB of
# WikiText-2 (~5k tokens) so that no rank tokenizes the whole 250k-token file first.
head -c 20000 prac_dist/data/wikitext-2/valid.txt >"$out/wikitext-head.txt"
train_args=(--max-steps 3 --micro-batch-size 2 --seq-len 32 --eval-every 0 --set train.eval_batches=1
    --set train.measure_memory=false
    --set "data.train_files=[/out/wikitext-head.txt]" --set "data.eval_files=[/out/wikitext-head.txt]")

check_summary() {
    python3 - "$1" "$2" <<'EOF'
import json, math, sys
s = json.load(open(sys.argv[1] + "/summary.json"))
assert s["backend"] == sys.argv[2] and s["world_size"] == 2 and s["steps"] == 3, s
assert math.isfinite(s["final_train_loss"]), s
print(f"container.sh: {sys.argv[2]} x2 ranks in the container: final train loss {s['final_train_loss']:.4f}")
EOF
}

"${run[@]}" "${common[@]}" --entrypoint /opt/prac_dist/launch/torchrun.sh "$IMAGE" \
    "${train_args[@]}" --output-dir /out/fsdp
check_summary "$out/fsdp" fsdp
phase_done "torchrun.sh (FSDP2, 2 ranks) in the container"

"${run[@]}" "${common[@]}" -e DS_ACCELERATOR=cpu --entrypoint /opt/prac_dist/launch/deepspeed.sh "$IMAGE" \
    "${train_args[@]}" --output-dir /out/deepspeed
check_summary "$out/deepspeed" deepspeed
phase_done "deepspeed.sh (ZeRO-2, 2 ranks) in the container"

# Two "nodes" over ssh: deepspeed's default pdsh runner, in one container, logs into a
# second container's unprivileged sshd (docker/start-sshd.sh) for both hosts of the
# hostfile (localhost and 127.0.0.1 are two names for the worker here), as on a cluster
# where every node runs the image with --network host and the same keys.
uid=$("${run[@]}" --entrypoint id "$IMAGE" -u)
keys=$out/ssh-keys
mkdir -m 700 "$keys"
"${run[@]}" --user root -v "$keys:/keys" --entrypoint ssh-keygen "$IMAGE" -q -t ed25519 -N '' -f /keys/id_ed25519
cp "$keys/id_ed25519.pub" "$keys/authorized_keys"
chmod 600 "$keys"/*
chown -R "$uid:$uid" "$keys"
printf 'localhost slots=1\n127.0.0.1 slots=1\n' >"$out/hostfile"
# Only NCCL*/PYTHON*/UCX*/MV2*/MLFLOW* and .deepspeed_env reach nodes started over ssh.
printf 'DS_ACCELERATOR=cpu\nOMP_NUM_THREADS=1\n' >"$out/deepspeed_env"
worker=prac-ci-ssh-worker-$$
trap '"${podman[@]}" rm -f --time 1 "$worker" >/dev/null 2>&1 || true' EXIT
"${start[@]}" -d --name "$worker" -v "$keys:/home/prac/.ssh:ro" -v "$out:/out" \
    --entrypoint /opt/prac_dist/docker/start-sshd.sh "$IMAGE" >/dev/null
for _ in $(seq 60); do
    "${podman[@]}" exec "$worker" test -s /tmp/prac-sshd.pid && break
    sleep 0.5
done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${run[@]}" -v "$keys:/home/prac/.ssh:ro" -v "$out:/out" -v "$out/deepspeed_env:/home/prac/.deepspeed_env:ro" \
    -e DS_ACCELERATOR=cpu -e NNODES=2 -e NPROC_PER_NODE=1 -e HOSTFILE=/out/hostfile \
    -e MASTER_ADDR=127.0.0.1 -e "MASTER_PORT=$port" \
    --entrypoint /opt/prac_dist/launch/deepspeed.sh "$IMAGE" "${train_args[@]}" --output-dir /out/ssh
check_summary "$out/ssh" deepspeed
"${podman[@]}" rm -f --time 1 "$worker" >/dev/null
trap - EXIT
phase_done "deepspeed.sh over ssh (pdsh -> a second container's sshd, 2 nodes x 1 rank)"

rm -rf "$out"
echo "container.sh: ${timings[*]/%/;} total $((SECONDS - t_start)) s" >&2
