# KubeDefender tasks. `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo v0.0.0-dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
DATE    ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS := -s -w -X github.com/kubedefender/kubedefender/version.Version=$(VERSION) \
	-X github.com/kubedefender/kubedefender/version.Commit=$(COMMIT) \
	-X github.com/kubedefender/kubedefender/version.Date=$(DATE)

CACHE_DIR    ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/kubedefender
LINT_VERSION := v2.15.0
GOLANGCI     := $(CACHE_DIR)/tools/golangci-lint-$(LINT_VERSION)/golangci-lint
TEST_TIMEOUT ?= 45m

.PHONY: all build test unit e2e deps redis controlplane helm lint fmt bench fuzz demo clean

all: build

build: ## build bin/kubedefender
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o bin/kubedefender ./cmd/kubedefender

deps: redis controlplane helm ## everything the tests start: redis-server, kube-apiserver, etcd, helm

redis: ## install redis-server from Debian when it is missing
	@if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then \
		echo "redis-server missing: installing it with apt-get"; \
		if [ "$$(id -u)" -ne 0 ]; then echo "error: redis-server is not installed and this user cannot apt-get install it; install redis-server and redis-tools" >&2; exit 1; fi; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null; \
	fi
	@redis-server --version

controlplane: ## build (or reuse from the cache) kube-apiserver, kube-controller-manager and etcd
	@bash e2e/tools/build.sh >/dev/null

helm: ## build (or reuse from the cache) the helm client the chart tests run
	@bash e2e/tools/helm/build.sh >/dev/null

test: deps ## every test: unit, property, fuzz seeds, Redis, end-to-end
	go test -count=1 -timeout $(TEST_TIMEOUT) ./...
	go test -count=1 -race -run '^(TestRedisClusterStatus|TestDecisionsThatQueue|TestADecisionGivenUp|TestAQueuedBatchGivenUp|TestASlowRedis)' ./limiter/redisstore/  # status reads every cluster master concurrently; budget decisions share calls across goroutines
	cd deploy/monitoring/rulestest && go test -count=1 ./...

unit: ## the fast tests only (no control plane)
	go test -count=1 $$(go list ./... | grep -v /e2e)

e2e: deps
	go test -count=1 -timeout $(TEST_TIMEOUT) -v ./e2e/...

fmt:
	gofmt -w $$(git ls-files '*.go')

$(GOLANGCI):
	@echo "building golangci-lint $(LINT_VERSION) into $(dir $@)"
	GOBIN=$(dir $@) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(LINT_VERSION)

lint: $(GOLANGCI) ## gofmt, go vet and golangci-lint
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt would change: $$unformatted" >&2; exit 1; fi
	go vet ./...
	$(GOLANGCI) run ./...

bench: deps ## benchmarks with figures to compare
	go test -run '^$$' -bench . -benchtime 2s ./limiter/... ./policy/
	go test -run '^$$' -bench . -benchtime 2s ./webhook/
	go test -run '^$$' -bench . -benchtime 2s ./proxy/

fuzz: ## run each fuzz target for a short while
	go test ./policy -run '^$$' -fuzz FuzzParse -fuzztime 30s
	go test ./proxy -run '^$$' -fuzz FuzzDeleteOptions -fuzztime 30s
	go test ./webhook -run '^$$' -fuzz FuzzDecodeAdmissionReview -fuzztime 30s
	go test ./webhook -run '^$$' -fuzz FuzzDecodeReviewParity -fuzztime 30s
	go test ./webhook -run '^$$' -fuzz FuzzEncodeResponseParity -fuzztime 30s
	go test ./internal/jsonscan -run '^$$' -fuzz FuzzSkip -fuzztime 30s
	go test ./replay -run '^$$' -fuzz FuzzDecodeEvent -fuzztime 30s

demo: deps ## a local control plane with KubeDefender in front, stopping a mass delete
	go run ./e2e/demo

clean:
	rm -rf bin

# The API server benchmark of issue 15: direct, a bare reverse proxy and
# KubeDefender in alternating rounds against a real kube-apiserver (a few
# minutes; loopback only). Extra go test flags go in BENCH_APISERVER_FLAGS,
# e.g. '-cpuprofile cpu.out -memprofile mem.out' or '-perf.rounds 4'.
BENCH_APISERVER_FLAGS ?=
.PHONY: bench-apiserver
bench-apiserver: controlplane ## KubeDefender vs a bare proxy vs direct, against a real API server
	cd e2e/perf && go test -run '^$$' -bench '^BenchmarkAPIServerLists$$' -benchtime 1x -timeout 20m . $(BENCH_APISERVER_FLAGS)
