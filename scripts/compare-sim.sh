#!/usr/bin/env bash
# make compare-sim: `relaygate compare` against two offline upstream
# simulators standing in for a relay and an official API, so the migration
# table can be seen with no network and no keys. Answers are synthetic and
# the prices in config/compare-sim.yaml are illustrative.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .compare

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
bin/upstream-sim -listen 127.0.0.1:9101 -seed 1 -latency 300ms -jitter 250ms -completion-tokens 120 \
	-tokens-per-chunk 4 -failure-rate 0.01 2>/dev/null &
pids+=($!)
bin/upstream-sim -listen 127.0.0.1:9102 -seed 2 -latency 550ms -jitter 450ms -completion-tokens 120 \
	-tokens-per-chunk 4 -failure-rate 0.03 -failure-statuses 429,500,503 2>/dev/null &
pids+=($!)
for port in 9101 9102; do
	for _ in $(seq 50); do
		if bin/gateway -healthcheck -healthcheck-url "http://127.0.0.1:$port/v1/models" 2>/dev/null; then break; fi
		sleep 0.1
	done
done
RELAY_SIM_URL=http://127.0.0.1:9101/v1 OFFICIAL_SIM_URL=http://127.0.0.1:9102/v1 \
	bin/relaygate compare -config config/compare-sim.yaml -model gpt-4.1 \
	-json .compare/compare-sim.json -chart .compare/compare-sim.png "$@"
