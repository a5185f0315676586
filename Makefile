# Relaygate: the gateway, its Pulumi program and the proof that a deploy works.
# `make test` is what CI runs (.ci/run); `make demo` is the one-machine tour.

SHELL := /bin/bash
GO ?= go
GOBIN := $(shell $(GO) env GOPATH)/bin
export PATH := $(GOBIN):$(PATH)

BIN := bin
CONFIG ?= config/gateway.yaml
STACK ?= dev

# Every shell script the project ships, for shellcheck.
SCRIPTS := $(shell git ls-files --cached --others --exclude-standard -- '*.sh' .ci/run 2>/dev/null)

.PHONY: all build test tools lint vet unit run demo clean

all: build

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=1 $(GO) build -trimpath -o $(BIN)/ ./service/cmd/...

tools:
	@bash scripts/install-tools.sh

vet:
	$(GO) vet ./...

lint: tools vet
	staticcheck ./...
	shellcheck $(SCRIPTS)

unit:
	$(GO) test -race -count=1 ./service/...
	$(GO) test -count=1 $$($(GO) list ./... | grep -v '/service/')

test: tools lint unit

run: build
	$(BIN)/gateway -config $(CONFIG)

demo: build
	@bash scripts/demo.sh

clean:
	rm -rf $(BIN) .demo
