#!/usr/bin/env bash
# make demo: the whole product on one machine. Starts real Redis, real
# Prometheus (with the project's config and alert rules), a real Postgres
# for the usage ledger (a throwaway cluster: initdb and pg_ctl into a
# temporary directory, loopback only) and the gateway as
# local processes, wired to the HolySheep relay when HOLYSHEEP_API_KEY is set
# and to the offline upstream simulator otherwise; runs a client session and
# prints what it saw, then runs the post-deploy smoke test against the local
# processes as it would against a stack (their "outputs" are written to
# $DEMO_DIR/outputs.json) and prints its report. Interactive: stays up until
# Ctrl-C. Otherwise (CI, a pipe): exits after the report, non-zero when a
# smoke check failed. Everything it starts stops with it.
set -euo pipefail
cd "$(dirname "$0")/.."

GATEWAY_PORT="${GATEWAY_PORT:-8000}"
SIM_PORT="${SIM_PORT:-9001}"
# Two simulated vLLM servers, the self-hosted pool: on the two ports after SIM_PORT.
GPU_SIM_A_PORT=$((SIM_PORT + 1))
GPU_SIM_B_PORT=$((SIM_PORT + 2))
REDIS_PORT="${REDIS_PORT:-6390}"
PROM_PORT="${PROM_PORT:-9090}"
PG_PORT="${PG_PORT:-5433}"
DEMO_DIR="${DEMO_DIR:-.demo}"

pids=()
pg_dir=""   # the ledger's Postgres cluster, while one runs
as_pg=()    # how to run Postgres's binaries: initdb refuses root
cleanup() {
	trap - EXIT INT TERM
	if ((${#pids[@]})); then
		echo
		echo "demo: stopping gateway, simulator, Redis, Prometheus and Postgres"
		kill "${pids[@]}" 2>/dev/null || true
		wait "${pids[@]}" 2>/dev/null || true
	fi
	if [[ -n "$pg_dir" ]]; then
		# After the gateway, which flushes its ledger rows as it stops.
		"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" stop -m fast >/dev/null 2>&1 || true
		rm -rf "$pg_dir"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Installed first: on a machine run by systemd, the packages' own services
# would otherwise hold the ports checked below (install-tools stops them).
bash scripts/install-tools.sh demo

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$GATEWAY_PORT" "$SIM_PORT" "$GPU_SIM_A_PORT" "$GPU_SIM_B_PORT" "$REDIS_PORT" "$PROM_PORT" "$PG_PORT"; do
	if port_busy "$p"; then
		echo "demo: port $p on 127.0.0.1 is in use; free it or set GATEWAY_PORT/SIM_PORT/REDIS_PORT/PROM_PORT/PG_PORT" >&2
		exit 1
	fi
done

# wait_http URL NAME: poll with the gateway binary's own probe (no curl needed).
wait_http() {
	for _ in $(seq 1 100); do
		if bin/gateway -healthcheck -healthcheck-url "$1" 2>/dev/null; then return 0; fi
		sleep 0.2
	done
	echo "demo: $2 did not come up at $1; its log is in $DEMO_DIR/" >&2
	exit 1
}

go build -o bin/smoketest ./smoketest/cmd/smoketest
rm -rf "$DEMO_DIR" && mkdir -p "$DEMO_DIR/redis" "$DEMO_DIR/prometheus"

GATEWAY_API_KEY="demo-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
export GATEWAY_API_KEY GATEWAY_PORT
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"

if [[ -n "${HOLYSHEEP_API_KEY:-}" ]]; then
	config=config/demo-relay.yaml
	budget_ms=30000 # the config's slo.latency_p95
	echo "demo: HOLYSHEEP_API_KEY is set: the gateway talks to the real relay"
else
	config=config/demo.yaml
	budget_ms=2000 # the config's slo.latency_p95
	export UPSTREAM_SIM_URL="http://127.0.0.1:$SIM_PORT/v1"
	echo "demo: no HOLYSHEEP_API_KEY: the gateway talks to the OFFLINE UPSTREAM SIMULATOR (synthetic answers)"
	bin/upstream-sim -listen "127.0.0.1:$SIM_PORT" -latency 40ms -jitter 10ms -chunk-delay 15ms \
		-completion-tokens 24 -tokens-per-chunk 2 \
		-models gpt-4.1,claude-sonnet-4.5,gemini-2.5-flash,deepseek-v3.2 2>"$DEMO_DIR/upstream-sim.log" &
	pids+=($!)
	# The self-hosted tier: two "vLLM" servers, one slower, that load for a
	# second (/health 503) before serving llama-3.1-8b.
	export GPU_SIM_A_URL="http://127.0.0.1:$GPU_SIM_A_PORT/v1" GPU_SIM_B_URL="http://127.0.0.1:$GPU_SIM_B_PORT/v1"
	bin/upstream-sim -listen "127.0.0.1:$GPU_SIM_A_PORT" -vllm -load-time 1s -latency 30ms -chunk-delay 10ms \
		-completion-tokens 24 -tokens-per-chunk 2 -models llama-3.1-8b 2>"$DEMO_DIR/gpu-sim-a.log" &
	pids+=($!)
	bin/upstream-sim -listen "127.0.0.1:$GPU_SIM_B_PORT" -vllm -load-time 1s -latency 60ms -chunk-delay 10ms \
		-completion-tokens 24 -tokens-per-chunk 2 -models llama-3.1-8b 2>"$DEMO_DIR/gpu-sim-b.log" &
	pids+=($!)
fi

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
	--dir "$DEMO_DIR/redis" >"$DEMO_DIR/redis.log" 2>&1 &
pids+=($!)

# The usage ledger's Postgres: a fresh cluster in a temporary directory
# (outside the checkout, which the postgres user may not be able to reach
# when we are root), trust authentication on 127.0.0.1 only.
pg_bin="$(compgen -G '/usr/lib/postgresql/*/bin' | sort -V | tail -n 1)"
pg_dir="$(mktemp -d "${TMPDIR:-/tmp}/relaygate-demo-pg.XXXXXX")"
if [[ "$(id -u)" == 0 ]]; then
	chmod 0711 "$pg_dir"
	chown postgres: "$pg_dir"
	as_pg=(runuser -u postgres --)
fi
(cd "$pg_dir" && "${as_pg[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth=trust -E UTF8 --locale=C --no-sync) \
	>"$DEMO_DIR/postgres-initdb.log" 2>&1
(cd "$pg_dir" && "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/postgres.log" -w start \
	-o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$pg_dir") >"$DEMO_DIR/postgres-pg_ctl.log" 2>&1
export LEDGER_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres?sslmode=disable"
export LEDGER_SPILL_DIR="$DEMO_DIR/ledger-spill"

# Prometheus runs the project's config and rules from a copy whose targets
# point at this gateway and whose intervals suit a short demo.
cp -r deploy/prometheus/. "$DEMO_DIR/prometheus/"
printf '[{"targets": ["127.0.0.1:%s"], "labels": {"env": "demo"}}]\n' "$GATEWAY_PORT" \
	>"$DEMO_DIR/prometheus/targets/gateway.json"
sed -i -e 's/scrape_interval: 15s/scrape_interval: 2s/' -e 's/scrape_timeout: 10s/scrape_timeout: 2s/' -e 's/evaluation_interval: 15s/evaluation_interval: 2s/' \
	-e "s/localhost:9090/127.0.0.1:$PROM_PORT/" "$DEMO_DIR/prometheus/prometheus.yml"
prometheus --config.file="$DEMO_DIR/prometheus/prometheus.yml" --storage.tsdb.path="$DEMO_DIR/prometheus/data" \
	--web.listen-address="127.0.0.1:$PROM_PORT" >"$DEMO_DIR/prometheus.log" 2>&1 &
pids+=($!)

bin/gateway -config "$config" 2>"$DEMO_DIR/gateway.log" &
pids+=($!)

wait_http "http://127.0.0.1:$GATEWAY_PORT/health" gateway
wait_http "http://127.0.0.1:$PROM_PORT/-/ready" Prometheus
echo "demo: gateway http://127.0.0.1:$GATEWAY_PORT  Prometheus http://127.0.0.1:$PROM_PORT  Redis 127.0.0.1:$REDIS_PORT  Postgres (ledger) 127.0.0.1:$PG_PORT"

bin/democlient -gateway "http://127.0.0.1:$GATEWAY_PORT" -prometheus "http://127.0.0.1:$PROM_PORT"

# The smoke test reads a stack's outputs; these are the local processes' in
# the same shape (`pulumi stack output --json --show-secrets`). No GPU is
# expected here. The file holds the demo's key, so only its owner reads it.
(
	umask 077
	cat >"$DEMO_DIR/outputs.json" <<EOF
{
  "gatewayUrl": "http://127.0.0.1:$GATEWAY_PORT",
  "prometheusUrl": "http://127.0.0.1:$PROM_PORT",
  "gatewayApiKey": "$GATEWAY_API_KEY",
  "expectedGpuCount": 0,
  "latencyBudgetP95Ms": $budget_ms,
  "imageRef": "local build: bin/gateway $(bin/gateway -version)",
  "hosts": ["127.0.0.1"],
  "instanceIds": [],
  "ledgerEnabled": true
}
EOF
)
echo
echo "demo: smoke test against the local processes (bin/smoketest -outputs $DEMO_DIR/outputs.json)"
# A failed smoke test ends the demo only when nobody is watching: at a
# terminal everything stays up to be looked at, and the demo exits with the
# smoke test's status when Ctrl-C stops it.
smoke_rc=0
bin/smoketest -outputs "$DEMO_DIR/outputs.json" -requests 20 -json "$DEMO_DIR/smoke-report.json" || smoke_rc=$?

# The ledger batches rows for ledger.batch_interval; what it holds now is
# every request above, by model and status.
sleep 1
echo
echo "demo: the usage ledger in Postgres (one row per request, answered or refused):"
"$pg_bin/psql" "$LEDGER_POSTGRES_URL" -X -P pager=off -c \
	"SELECT model, status, count(*) AS requests, sum(prompt_tokens + completion_tokens) AS tokens, round(sum(cost_usd)::numeric, 6) AS cost_usd, round(sum(savings_usd)::numeric, 6) AS savings_usd FROM ledger GROUP BY 1, 2 ORDER BY 1, 2" ||
	echo "demo: the ledger could not be read (its log: $DEMO_DIR/gateway.log)"

if [[ -t 0 ]]; then
	trap 'exit "$smoke_rc"' INT TERM
	echo
	if ((smoke_rc != 0)); then
		echo "demo: the smoke test FAILED (exit $smoke_rc; report in $DEMO_DIR/smoke-report.json); everything stays up so you can look."
	fi
	echo "demo: running. Try it:"
	echo "  curl -s http://127.0.0.1:$GATEWAY_PORT/v1/chat/completions -H 'Authorization: Bearer $GATEWAY_API_KEY' \\"
	echo "       -d '{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'"
	echo "  The ledger: $pg_bin/psql '$LEDGER_POSTGRES_URL' -c 'SELECT * FROM ledger ORDER BY at DESC LIMIT 5'"
	echo "  Logs are in $DEMO_DIR/. Ctrl-C stops everything."
	wait
fi
if ((smoke_rc != 0)); then exit "$smoke_rc"; fi
