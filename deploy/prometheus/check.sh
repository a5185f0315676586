#!/usr/bin/env bash
# Checks the Prometheus config and alert rules with the real promtool: config
# syntax (which also loads the rule files), rule syntax, and the rule unit
# tests; and the Alertmanager config with the real amtool. Run from anywhere; `make test` calls it.
set -euo pipefail

dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$dir"

if ! command -v promtool >/dev/null 2>&1; then
	echo "check.sh: promtool not found; run 'make tools' (installs Debian's prometheus package)" >&2
	exit 1
fi

promtool check config prometheus.yml
promtool check rules rules/*.rules.yml
promtool test rules rules/*.rules.test.yml

if ! command -v amtool >/dev/null 2>&1; then
	echo "check.sh: amtool not found; run 'make tools' (installs Debian's prometheus-alertmanager package)" >&2
	exit 1
fi
amtool check-config alertmanager.yml
