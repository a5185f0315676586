# Relaygate: the gateway, its Pulumi program and the proof that a deploy works.
# `make test` is what CI runs (.ci/run); `make demo` is the one-machine tour.

SHELL := /bin/bash
GO ?= go
GOBIN := $(shell $(GO) env GOPATH)/bin
export PATH := $(GOBIN):$(PATH)
# go-nvml's C header marks old NVML calls deprecated; the warnings are noise.
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations

BIN := bin
CONFIG ?= config/gateway.yaml
STACK ?= dev

# Every shell script the project ships, for shellcheck.
SCRIPTS := $(shell git ls-files --cached --others --exclude-standard -- '*.sh' .ci/run 2>/dev/null)
WORKFLOWS := $(wildcard .github/workflows/*.yml)

.PHONY: all build test tools lint gofmt vet staticcheck shellcheck promcheck actionlint vulncheck unit \
	run demo preview up smoke deploy rollback bench compare compare-sim report clean

all: build

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=1 $(GO) build -trimpath -o $(BIN)/ ./service/cmd/...

## test: install what is missing, lint everything, run every test.
test: tools lint unit

tools:
	@bash scripts/install-tools.sh

lint: gofmt vet staticcheck shellcheck promcheck actionlint vulncheck

gofmt:
	@out="$$(gofmt -l $$(git ls-files --cached --others --exclude-standard -- '*.go'))"; \
	if [ -n "$$out" ]; then echo "gofmt: these files need gofmt -w:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

staticcheck:
	staticcheck ./...

shellcheck:
	shellcheck $(SCRIPTS)

promcheck:
	bash deploy/prometheus/check.sh

actionlint:
	@if [ -n "$(WORKFLOWS)" ]; then actionlint $(WORKFLOWS) && echo "actionlint: $(words $(WORKFLOWS)) workflows clean"; else echo "actionlint: no workflows"; fi

vulncheck:
	@bash scripts/govulncheck.sh

# The gateway's packages run under the race detector; the Pulumi program,
# smoke test and bench packages are large to instrument and run without it.
# The race detector slows requests about tenfold, so the reliability suite
# runs its full volume (20,000 requests per fault) once more without it.
unit:
	$(GO) test -race -count=1 ./service/...
	$(GO) test -count=1 $$($(GO) list ./... | grep -v '/service/')
	$(GO) test -count=1 ./service/internal/reliability/ ./service/cmd/gateway/
	# Every Go benchmark once, so a benchmark a change broke fails here, not in make bench.
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x ./service/...
	bash scripts/fuzz.sh 5s

run: build
	$(BIN)/gateway -config $(CONFIG)

demo: build
	@bash scripts/demo.sh

# Pulumi: STACK is dev, prod or local. PULUMI_FLAGS passes extra flags
# (e.g. --yes for an unattended up). IMAGE_TAG is the tag the gateway image
# is built and pushed under, written to the stack's imageTag first. The
# registry's tags are immutable, so by default every build gets its own:
# the short commit, plus -dirty-<hash of the uncommitted changes> when the
# tree has any (scripts/deploy.sh --image-tag prints it). preview and up keep
# the image a rollback pinned (reuseImage on) unless IMAGE_TAG is given.
PULUMI_FLAGS ?=
IMAGE_TAG ?=
preview:
	IMAGE_TAG=$(IMAGE_TAG) bash scripts/deploy.sh --image-config $(STACK)
	pulumi preview --stack $(STACK) $(PULUMI_FLAGS)

up:
	IMAGE_TAG=$(IMAGE_TAG) bash scripts/deploy.sh --image-config $(STACK)
	pulumi up --stack $(STACK) $(PULUMI_FLAGS)

## smoke: verify a deployed stack from its outputs (SMOKE_FLAGS="-json report.json").
SMOKE_FLAGS ?=
smoke:
	$(GO) run ./smoketest/cmd/smoketest -stack $(STACK) $(SMOKE_FLAGS)

## deploy: build this checkout under IMAGE_TAG, up, then smoke; a failure
## rolls the stack back (when `up` changed it) and exits non-zero.
deploy:
	IMAGE_TAG=$(IMAGE_TAG) bash scripts/deploy.sh $(STACK)

## rollback: revert the stack to its previous successful update, then smoke.
rollback:
	$(GO) run ./smoketest/cmd/rollback -stack $(STACK)

## bench: the benchmark suite (about 6 minutes), a long fuzz run and a
## 10-minute soak; not part of make test.
BENCH_FLAGS ?=
bench: build
	WITH_NGINX=1 bash scripts/install-tools.sh demo
	$(GO) run ./bench/cmd/relaybench -out .bench/ $(BENCH_FLAGS)
	bash scripts/fuzz.sh 2m
	RELAYGATE_SOAK=10m $(GO) test -count=1 -run TestSoak -timeout 30m ./service/internal/reliability/

## compare: measure a model's upstreams side by side before migrating
## (COMPARE_FLAGS="-upstreams a,b -n 200"); compare-sim: the same against two
## offline simulators, no network, no keys.
MODEL ?= gpt-4.1
COMPARE_FLAGS ?=
compare: build
	@mkdir -p .compare
	$(BIN)/relaygate compare -config $(CONFIG) -model $(MODEL) -json .compare/compare.json -chart .compare/compare.png $(COMPARE_FLAGS)

compare-sim: build
	bash scripts/compare-sim.sh $(COMPARE_FLAGS)

## report: the same table after migrating, from Prometheus (WINDOW=1h|24h|30d).
PROMETHEUS_URL ?= http://127.0.0.1:9090
WINDOW ?= 24h
report: build
	@mkdir -p .report
	$(BIN)/relaygate report -config $(CONFIG) -prometheus $(PROMETHEUS_URL) -window $(WINDOW) \
		-json .report/report.json -chart .report/report.png > .report/report.md
	@cat .report/report.md

clean:
	rm -rf $(BIN) .demo .bench .compare .report
