#!/usr/bin/env bash
# make deploy STACK=<stack>: the deploy gate. `pulumi up`, then the smoke test
# against the stack's new outputs. When either fails, the stack is rolled back
# to its last successful update (which is smoke-tested in turn) and this exits
# non-zero, so CI marks the deploy failed even when the rollback worked.
#
#   STACK=dev scripts/deploy.sh          or    scripts/deploy.sh dev
#
# IMAGE_TAG, when set (CI sets the commit), becomes the stack's imageTag
# before `up`, so each update's configuration in the stack history names its
# image and a rollback restores it. The registry's tags are immutable, so a
# changed checkout needs a new IMAGE_TAG. A deploy always builds: it sets
# reuseImage to false, which a rollback leaves on (the rollback deploys the
# old image from the registry). SMOKE_REPORT, when set, is where the smoke
# test's JSON report goes. Needs the pulumi CLI, logged in to the stack's
# backend, and the cloud credentials the stack uses.
set -euo pipefail
cd "$(dirname "$0")/.."

stack="${1:-${STACK:-}}"
if [[ -z "$stack" ]]; then
	echo "deploy: usage: scripts/deploy.sh STACK (or make deploy STACK=dev)" >&2
	exit 2
fi
if ! command -v pulumi >/dev/null 2>&1; then
	echo "deploy: the pulumi CLI is not installed: https://www.pulumi.com/docs/iac/download-install/" >&2
	exit 2
fi

# Built before anything changes, so a compile error never strands a
# half-deployed stack without its rollback.
bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/" ./smoketest/cmd/smoketest ./smoketest/cmd/rollback

rollback() {
	echo "deploy: $1; rolling stack $stack back to its last successful update" >&2
	if "$bin/rollback" -stack "$stack"; then
		echo "deploy: FAILED, and stack $stack was rolled back; the smoke report above says what was wrong" >&2
	else
		echo "deploy: FAILED, and the ROLLBACK of stack $stack did not complete: it needs a person now (see above)" >&2
	fi
	exit 1
}

if [[ -n "${IMAGE_TAG:-}" ]]; then
	pulumi config set --stack "$stack" imageTag "$IMAGE_TAG"
fi
pulumi config set --stack "$stack" reuseImage false
rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if ! pulumi up --stack "$stack" --yes --message "deploy $rev${IMAGE_TAG:+ (image $IMAGE_TAG)}"; then
	rollback "pulumi up failed"
fi

smoke_args=(-stack "$stack")
if [[ -n "${SMOKE_REPORT:-}" ]]; then
	smoke_args+=(-json "$SMOKE_REPORT")
fi
if ! "$bin/smoketest" "${smoke_args[@]}"; then
	rollback "the smoke test failed"
fi
echo "deploy: stack $stack is up and passed the smoke test"
