#!/usr/bin/env bash
# make deploy STACK=<stack>: the deploy gate. `pulumi up`, then the smoke test
# against the stack's new outputs. When either fails after `up` recorded an
# update, the stack is rolled back to its last successful update (which is
# smoke-tested in turn); when `up` failed before recording one (the program
# did not compile, the configuration is invalid, the preview failed), the
# stack is still on its last good update and nothing is rolled back. Either
# way a failure exits non-zero, so CI marks the deploy failed even when the
# rollback worked.
#
#   STACK=dev scripts/deploy.sh          or    scripts/deploy.sh dev
#   scripts/deploy.sh --image-tag        prints the default IMAGE_TAG
#   scripts/deploy.sh --image-config dev make preview/up: set the stack's imageTag
#
# IMAGE_TAG becomes the stack's imageTag before `up`, so each update's
# configuration in the stack history names its image and a rollback restores
# it. The registry's tags are immutable, so each build needs a tag of its
# own: unset, it is the short commit, plus -dirty-<hash of the uncommitted
# changes> when the tree has any, plus the time (CI sets the commit, the run
# and its attempt). A deploy always builds: it sets reuseImage to false,
# which a rollback leaves on (the rollback deploys the old image from the
# registry). The time keeps a second deploy of one commit, after a rollback
# dropped the image from the stack, from pushing a tag the registry has. SMOKE_REPORT,
# when set, is where the smoke test's JSON report goes; SMOKE_WAIT_READY
# (default 2m) is how long the smoke test first waits for the gateway's
# /ready, since behind a load balancer replaced containers take traffic only
# once their health checks pass. Needs the pulumi CLI, logged in to the
# stack's backend, and the cloud credentials the stack uses.
set -euo pipefail
cd "$(dirname "$0")/.."

# image_tag prints the default IMAGE_TAG. The dirty hash covers tracked
# changes and untracked files, but not the image settings (imageTag,
# reuseImage) that preview, up, deploy and rollback write into the stack
# files themselves: otherwise every run would change the next run's tag, and
# `make preview` would show another tag than the `make up` after it.
image_tag() {
	local rev changes
	if ! rev="$(git rev-parse --short HEAD 2>/dev/null)"; then
		date -u +build-%Y%m%d%H%M%S # not a git checkout: unique all the same
		return
	fi
	changes="$(uncommitted_changes)"
	if [[ -z "$changes" ]]; then
		echo "$rev"
	else
		echo "$rev-dirty-$(git hash-object --stdin <<<"$changes" | cut -c1-7)"
	fi
}

uncommitted_changes() {
	local f d
	git diff --binary HEAD -- . ':(exclude,glob)Pulumi.*.yaml'
	git ls-files -z --others --exclude-standard -- . ':(exclude,glob)Pulumi.*.yaml' |
		while IFS= read -r -d '' f; do
			printf '%s %s\n' "$(git hash-object -- "$f")" "$f"
		done
	git ls-files -z --cached --others --exclude-standard -- ':(glob)Pulumi.*.yaml' |
		while IFS= read -r -d '' f; do
			d="$(diff <(git show "HEAD:$f" 2>/dev/null | without_image_settings) \
				<(without_image_settings <"$f" 2>/dev/null))" || true
			if [[ -n "$d" ]]; then printf '%s\n%s\n' "$f" "$d"; fi
		done
}

without_image_settings() { grep -Ev '^[[:space:]]*relaygate:(imageTag|reuseImage):' || true; }

# image_config STACK: what `make preview` and `make up` do before they run:
# point the stack's imageTag at IMAGE_TAG (default: image_tag), which the
# program builds and pushes. A stack a rollback left on reuseImage keeps the
# image it pinned unless IMAGE_TAG is given: `up` then re-applies the
# rollback instead of building this checkout (`make deploy` builds it).
image_config() {
	local stack="$1" reuse
	reuse="$(pulumi config get --stack "$stack" reuseImage 2>/dev/null || true)"
	if [[ "$reuse" == true && -z "${IMAGE_TAG:-}" ]]; then
		echo "deploy: stack $stack has reuseImage on (a rollback pinned imageTag $(pulumi config get --stack "$stack" imageTag 2>/dev/null || echo '?')):" \
			"keeping that image, nothing is built; \`make deploy STACK=$stack\` builds this checkout" >&2
		return
	fi
	local tag="${IMAGE_TAG:-$(image_tag)}"
	echo "deploy: stack $stack: imageTag $tag" >&2
	pulumi config set --stack "$stack" imageTag "$tag"
}

need_pulumi() {
	if ! command -v pulumi >/dev/null 2>&1; then
		echo "deploy: the pulumi CLI is not installed: https://www.pulumi.com/docs/iac/download-install/" >&2
		exit 2
	fi
}

case "${1:-}" in
--image-tag)
	image_tag
	exit 0
	;;
--image-config)
	[[ -n "${2:-}" ]] || {
		echo "deploy: usage: scripts/deploy.sh --image-config STACK" >&2
		exit 2
	}
	need_pulumi
	image_config "$2"
	exit 0
	;;
esac

stack="${1:-${STACK:-}}"
if [[ -z "$stack" ]]; then
	echo "deploy: usage: scripts/deploy.sh STACK (or make deploy STACK=dev)" >&2
	exit 2
fi
need_pulumi
IMAGE_TAG="${IMAGE_TAG:-$(image_tag)-$(date -u +%Y%m%d%H%M%S)}"

# Built before anything changes, so a compile error never strands a
# half-deployed stack without its rollback.
bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/" ./smoketest/cmd/smoketest ./smoketest/cmd/rollback

# The number of the stack's newest update before this deploy (its version on
# Pulumi Cloud; on a self-managed backend, whose updates all have version 0,
# the count of updates in the history): after a failure, the rollback goes
# ahead only if `up` recorded another update.
if ! before="$("$bin/rollback" -stack "$stack" -print-version)"; then
	echo "deploy: cannot read the update history of stack $stack (see above); nothing was changed" >&2
	exit 1
fi

rollback() {
	echo "deploy: $1; rolling stack $stack back to its last successful update if this deploy changed it" >&2
	local rc=0
	"$bin/rollback" -stack "$stack" -after "$before" -wait-ready "${SMOKE_WAIT_READY:-2m}" || rc=$?
	case "$rc" in
	0) echo "deploy: FAILED, and stack $stack was rolled back; the output above says what was wrong" >&2 ;;
	3) echo "deploy: FAILED, and the deploy changed nothing on stack $stack: \`pulumi up\` stopped before it recorded an update," \
		"so the stack is still on the update it had before and nothing was rolled back; the errors above say why" >&2 ;;
	*) echo "deploy: FAILED, and the ROLLBACK of stack $stack did not complete: it needs a person now (see above)" >&2 ;;
	esac
	exit 1
}

pulumi config set --stack "$stack" imageTag "$IMAGE_TAG"
pulumi config set --stack "$stack" reuseImage false
rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if ! pulumi up --stack "$stack" --yes --message "deploy $rev (image $IMAGE_TAG)"; then
	rollback "pulumi up failed"
fi

smoke_args=(-stack "$stack" -wait-ready "${SMOKE_WAIT_READY:-2m}")
if [[ -n "${SMOKE_REPORT:-}" ]]; then
	smoke_args+=(-json "$SMOKE_REPORT")
fi
if ! "$bin/smoketest" "${smoke_args[@]}"; then
	rollback "the smoke test failed"
fi
echo "deploy: stack $stack is up and passed the smoke test"
