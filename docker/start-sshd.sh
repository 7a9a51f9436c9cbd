#!/usr/bin/env bash
# Start the image's sshd as the current (unprivileged) user on port 2222, then run the
# given command, or wait while other nodes' launchers log in (deepspeed pdsh, mpirun).
#   docker run ... --entrypoint /opt/prac_dist/docker/start-sshd.sh IMAGE            # worker
#   docker run ... --entrypoint /opt/prac_dist/docker/start-sshd.sh IMAGE launch/deepspeed.sh ...
# The user's keys (id_ed25519, authorized_keys) are mounted at ~/.ssh; the host key is made
# per container under /tmp, so no private key is baked into the image.
set -euo pipefail

host_key_dir=/tmp/prac-sshd
if [[ ! -f $host_key_dir/ssh_host_ed25519_key ]]; then
    mkdir -m 700 "$host_key_dir"
    ssh-keygen -q -t ed25519 -N '' -f "$host_key_dir/ssh_host_ed25519_key"
fi
/usr/sbin/sshd -f /opt/prac_dist/docker/sshd_config

if (($#)); then
    exec "$@"
fi
# As PID 1 a plain `sleep` would ignore `docker stop`'s SIGTERM; stop sshd and leave.
trap 'kill "$(cat /tmp/prac-sshd.pid)" 2>/dev/null; exit 0' TERM INT
sleep infinity &
wait "$!"
