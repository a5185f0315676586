#!/usr/bin/env bash
# Installs what `make test` needs, only where it is missing: Debian packages
# through apt-get (one `apt-get update` first) and Go tools through `go install`
# at pinned versions. Safe to run again; it does nothing when all is present.
#
#   scripts/install-tools.sh          everything `make test` needs
#   scripts/install-tools.sh demo     only the servers `make demo` runs
set -euo pipefail

mode="${1:-test}"

STATICCHECK_VERSION="${STATICCHECK_VERSION:-v0.8.2}"
ACTIONLINT_VERSION="${ACTIONLINT_VERSION:-v1.7.12}"
GOVULNCHECK_VERSION="${GOVULNCHECK_VERSION:-v1.9.0}"

need_pkgs=()
command -v redis-server >/dev/null 2>&1 || need_pkgs+=(redis-server)
command -v prometheus >/dev/null 2>&1 || need_pkgs+=(prometheus)
command -v promtool >/dev/null 2>&1 || need_pkgs+=(prometheus)
# The ledger's tests and the demo run Debian's Postgres binaries from
# /usr/lib/postgresql/*/bin (initdb, pg_ctl, postgres), not a system cluster.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_pkgs+=(postgresql)
if [[ "$mode" == test ]]; then
	command -v shellcheck >/dev/null 2>&1 || need_pkgs+=(shellcheck)
	command -v amtool >/dev/null 2>&1 || need_pkgs+=(prometheus-alertmanager)
fi
if [[ "${WITH_NGINX:-0}" == 1 ]] && ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
	need_pkgs+=(nginx-light)
fi

if ((${#need_pkgs[@]})); then
	sudo=""
	if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
	echo "install-tools: apt-get install ${need_pkgs[*]}" >&2
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
	# On a machine run by systemd the packages start their own services
	# (Prometheus on :9090, Redis on :6379, Alertmanager on :9093, Postgres on :5432), which would take the ports
	# the demo and the tests start their own servers on. Only the services
	# of packages installed just now are stopped, and kept from starting
	# at boot.
	if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
		for svc in "${need_pkgs[@]}"; do
			case "$svc" in
			prometheus | redis-server | prometheus-alertmanager | postgresql) ;;
			nginx-light) svc=nginx ;;
			*) continue ;;
			esac
			$sudo systemctl disable --now "$svc" >/dev/null 2>&1 || true
		done
	fi
fi

if [[ "$mode" != test ]]; then
	exit 0
fi

gobin="$(go env GOPATH)/bin"
install_go_tool() { # name module@version
	if [[ ! -x "$gobin/$1" ]] && ! command -v "$1" >/dev/null 2>&1; then
		echo "install-tools: go install $2" >&2
		go install "$2"
	fi
}
install_go_tool staticcheck "honnef.co/go/tools/cmd/staticcheck@${STATICCHECK_VERSION}"
install_go_tool actionlint "github.com/rhysd/actionlint/cmd/actionlint@${ACTIONLINT_VERSION}"
install_go_tool govulncheck "golang.org/x/vuln/cmd/govulncheck@${GOVULNCHECK_VERSION}"
