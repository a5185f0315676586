#!/usr/bin/env bash
# Relaygate GPU host bootstrap. cloud-init runs it once, as root, on first boot
# (it is the instance's user data). It leaves the host able to run GPU
# containers and proves that it can, or it fails loudly: a non-zero exit marks
# cloud-init as failed, `cloud-init status --wait` (which the Pulumi program
# runs before it deploys any container) exits non-zero, and the deploy stops
# instead of starting a gateway that cannot see its GPUs.
#
# The Pulumi program puts settings in front of this file as exported variables;
# the defaults below let it run by hand too:
#   RELAYGATE_EXPECTED_GPUS  GPUs the instance type has; fewer visible is fatal
#   RELAYGATE_SSH_USER       the login the Docker provider uses over SSH
#   RELAYGATE_CUDA_IMAGE     a CUDA base image, only used to run nvidia-smi
#
# It is idempotent: run again, it checks the same things and changes nothing
# that is already right. Output goes to /var/log/relaygate-bootstrap.log as
# well as cloud-init's own log.
set -Eeuo pipefail

expected_gpus="${RELAYGATE_EXPECTED_GPUS:-1}"
ssh_user="${RELAYGATE_SSH_USER:-ubuntu}"
cuda_image="${RELAYGATE_CUDA_IMAGE:-nvidia/cuda:12.4.1-base-ubuntu22.04}"
readonly log_file=/var/log/relaygate-bootstrap.log
readonly state_dir=/var/lib/relaygate
# The readiness check (infra/internal/gpuhost) requires this file.
readonly marker=/var/lib/relaygate/bootstrap-ok
readonly toolkit_keyring=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
readonly toolkit_list=/etc/apt/sources.list.d/nvidia-container-toolkit.list

exec > >(tee -a "$log_file") 2>&1

log() { printf '%s relaygate-bootstrap: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }
fail() {
	log "FAILED: $*"
	# The serial console is what `aws ec2 get-console-output` shows when SSH
	# is not possible; say it there as well.
	printf 'relaygate-bootstrap FAILED: %s\n' "$*" >/dev/console 2>/dev/null || true
	exit 1
}
trap 'fail "line ${LINENO}: ${BASH_COMMAND} exited with status $?"' ERR

[[ "$(id -u)" == 0 ]] || fail "must run as root"
[[ "$expected_gpus" =~ ^[0-9]+$ ]] || fail "RELAYGATE_EXPECTED_GPUS=${expected_gpus} is not a number"
id "$ssh_user" >/dev/null 2>&1 || fail "user ${ssh_user} does not exist on this image"

export DEBIAN_FRONTEND=noninteractive
# First boot races unattended-upgrades for the dpkg lock; wait for it rather
# than fail.
apt_get() { apt-get -o DPkg::Lock::Timeout=600 -y -q "$@"; }

# retry N CMD...: network steps (apt, image pulls) fail transiently on a
# fresh instance.
retry() {
	local tries=$1 n=1
	shift
	until "$@"; do
		((n >= tries)) && return 1
		log "attempt ${n}/${tries} of '$*' failed; retrying in $((n * 10))s"
		sleep $((n * 10))
		n=$((n + 1))
	done
}

log "starting: expecting ${expected_gpus} GPU(s), SSH user ${ssh_user}"

# 1. The NVIDIA driver comes with the AMI; installing one here would need a
#    reboot and a kernel-matched build, so its absence is a wrong AMI.
command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: the AMI has no NVIDIA driver; use an NVIDIA-driver AMI"
host_gpus="$(nvidia-smi -L | grep -c '^GPU ' || true)"
log "driver sees ${host_gpus} GPU(s): $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | paste -sd ';' -)"
((host_gpus >= expected_gpus)) || fail "driver sees ${host_gpus} GPU(s), expected ${expected_gpus}"

# 2. Docker.
if ! command -v docker >/dev/null; then
	log "installing docker.io"
	retry 3 apt_get update
	retry 3 apt_get install --no-install-recommends docker.io
fi

# 3. The NVIDIA container toolkit, from NVIDIA's signed repository.
if ! command -v nvidia-ctk >/dev/null; then
	log "installing nvidia-container-toolkit"
	retry 3 apt_get update
	retry 3 apt_get install --no-install-recommends ca-certificates curl gnupg
	retry 3 curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey -o /tmp/nvidia-container-toolkit.gpgkey
	gpg --batch --yes --dearmor -o "$toolkit_keyring" /tmp/nvidia-container-toolkit.gpgkey
	retry 3 curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list -o /tmp/nvidia-container-toolkit.list
	sed "s#deb https://#deb [signed-by=${toolkit_keyring}] https://#g" /tmp/nvidia-container-toolkit.list >"$toolkit_list"
	retry 3 apt_get update
	retry 3 apt_get install --no-install-recommends nvidia-container-toolkit
fi

# `nvidia-ctk runtime configure` only edits daemon.json when the runtime is
# missing, so this is safe on AMIs that ship it configured.
log "registering the nvidia runtime with Docker"
nvidia-ctk runtime configure --runtime=docker
systemctl enable docker.service
systemctl restart docker.service
retry 5 docker info >/dev/null || fail "the Docker daemon does not answer"

# 4. The SSH user drives Docker remotely (Pulumi's Docker provider over ssh://).
usermod -aG docker "$ssh_user"

# 5. Proof: a container must see every GPU the instance type has.
log "pulling ${cuda_image}"
retry 5 docker pull -q "$cuda_image" >/dev/null || fail "cannot pull ${cuda_image}"
container_gpus="$(docker run --rm --gpus all "$cuda_image" nvidia-smi -L)" ||
	fail "a container cannot run nvidia-smi with --gpus all; the NVIDIA container toolkit is not working"
printf '%s\n' "$container_gpus"
visible="$(grep -c '^GPU ' <<<"$container_gpus" || true)"
((visible == host_gpus)) || fail "a container sees ${visible} GPU(s), the host ${host_gpus}"
((visible >= expected_gpus)) || fail "a container sees ${visible} GPU(s), expected ${expected_gpus}"

install -d -m 0755 "$state_dir"
date -u +%Y-%m-%dT%H:%M:%SZ >"${marker}"
log "done: ${visible} GPU(s) visible in containers"
