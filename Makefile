# matchplane: every developer and operator entry point. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help fmt lint test build release demo up-local down-local bench-matchmaker bench-proxy manifests-check ci

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-26s %s\n", $$1, $$2}'

fmt: ## Check formatting, exactly as CI does
	cargo fmt --all --check

lint: ## Clippy with warnings denied, exactly as CI does
	cargo clippy --workspace --all-targets --locked -- -D warnings

test: ## Run every test against ephemeral Redis and PostgreSQL (started and stopped here)
	scripts/test.sh

build: ## Debug build of every binary
	cargo build --workspace --bins --locked

release: ## Release build of every binary
	cargo build --workspace --bins --release --locked

demo: ## The whole stack on this machine with a loadgen swarm, ending in a summary (CLIENTS, MATCH_DURATION)
	scripts/demo.sh

up-local: ## Keep the demo's stack running on this machine for hands-on play (SESSION_SIZE)
	scripts/local.sh up

down-local: ## Stop what up-local started
	scripts/local.sh down

bench-matchmaker: ## Joins/s and players placed/s of one release backend (RUNTIME=none); PLAYERS, CONCURRENCY
	scripts/bench-matchmaker.sh

bench-proxy: ## Echo throughput and latency: direct vs matchplane proxy vs HAProxy, side by side
	scripts/bench-proxy.sh

manifests-check: ## deploy/ and the rendered game-server Pod validate against the pinned Kubernetes schemas
	scripts/check-manifests.sh

ci: ## Run what CI runs
	bash .ci/run
