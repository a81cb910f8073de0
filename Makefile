# matchplane: every developer and operator entry point. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help fmt lint test build release demo demo-kubernetes demo-regions chaos demo-web web-check console-check up-local down-local bench-matchmaker bench-forming bench-proxy bench-udp bench-time-to-play conformance manifests-check docs-check api-check scripts-check ops-check rollout-check monitoring-check deny fuzz fuzz-build ci \
	up cluster databases game-build game-push game-load-images game-backend game-proxy game-testbed proxy-port-forward-local game-load-local status clear-databases ping-redis ping-postgres free-local-db-ports down

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-26s %s\n", $$1, $$2}'

fmt: ## Check formatting, exactly as CI does
	cargo fmt --all --check

lint: ## Clippy with warnings denied, exactly as CI does
	cargo clippy --workspace --all-targets --locked -- -D warnings

test: ## Run every test against ephemeral Redis and PostgreSQL (started and stopped here)
	scripts/test.sh

build: ## The shared build of every binary (the dev profile, dependencies optimised), as make demo and make test build it
	cargo build --workspace --bins --locked

release: ## Release build of every binary (as the benchmarks build it)
	cargo build --release --locked --workspace --exclude testkit --bins

demo: ## The whole stack on this machine with a loadgen swarm, ending in a summary (CLIENTS, MATCH_DURATION, SPAWN_RATE, SESSION_SIZE, SCENARIO, CHURN_PERCENT_PER_MINUTE, SERVER, MATCHMAKING_CONFIG, WARM_POOL_MIN, WARM_POOL_MAX, RUST_LOG, BUILD_PROFILE)
	scripts/demo.sh

demo-kubernetes: ## The demo with RUNTIME=kubernetes, two backend replicas and a Pod per session on kube-sim (CLIENTS, MATCH_DURATION, SPAWN_RATE, SESSION_SIZE, POD_START_DELAY_MS, WARM_POOL_MIN, WARM_POOL_MAX, NETWORK_POLICY, RUST_LOG, BUILD_PROFILE)
	scripts/demo-kubernetes.sh

demo-regions: ## Three kube-sim clusters as three regions (eu, us, asia), each with its proxy and warm Pods, two replicas with REGIONS and a ranked swarm; one region killed mid-run and brought back; sessions and time to play per region before, during and after (CLIENTS, SPAWN_RATE, MATCH_DURATION, KILL_REGION, KILL_AT_SECONDS, KILL_FOR_SECONDS, POD_START_DELAY_MS, WARM_POOL_MIN, RUST_LOG, BUILD_PROFILE)
	scripts/demo-regions.sh

chaos: ## Three regions, two replicas, Redis (primary, replica, Sentinels; append-only files) and two swarms (ranked with parties, first-come) under random faults for CHAOS_MINUTES; every invariant checked all along and at the end; per fault kind how often it struck and the p50/p99 time to recover (CHAOS_MINUTES, CHAOS_EVERY_SECONDS, POD_START_DELAY_MS, WARM_POOL_MIN, RUST_LOG, BUILD_PROFILE)
	scripts/chaos.sh

demo-web: ## The web page playing the built-in game in a browser, on the local stack with TLS (a throwaway CA made for the run): prints the URL, runs until ctrl-c (SESSION_SIZE, WEB_PLAYERS, MATCHMAKING_CONFIG, WARM_POOL_MIN, WARM_POOL_MAX, RUST_LOG, BUILD_PROFILE)
	scripts/web.sh demo

web-check: ## The JavaScript client's tests (Node) and the page in headless Chromium (Playwright) playing whole matches over wss; with WEB_BENCH_PLAYERS, their time to play in the page (WEB_PLAYERS, SESSION_SIZE, WEB_BENCH_PLAYERS, MATCHMAKING_CONFIG, WARM_POOL_MIN, WARM_POOL_MAX, RUST_LOG)
	scripts/web.sh check "$(WEB_BENCH_PLAYERS)"

console-check: ## The operator console in headless Chromium (Playwright) over https while a swarm plays: sign-in, live queues and sessions, a player, a session ended and audited, phone and desktop widths; with CONSOLE_BENCH_TABS, the backend's CPU per open console (CONSOLE_BENCH_TABS, BENCH_SECONDS, RUST_LOG, BUILD_PROFILE)
	scripts/console.sh

up-local: ## Keep the demo's stack running on this machine for hands-on play (SESSION_SIZE, MATCHMAKING_CONFIG, WARM_POOL_MIN, WARM_POOL_MAX, PLAYER_AUTH, RUST_LOG, BUILD_PROFILE)
	scripts/local.sh up

down-local: ## Stop what up-local started
	scripts/local.sh down

bench-matchmaker: ## fifo and ranked joins side by side: tickets/s, placed/s, time to match, quality (RUNTIME=none); PLAYERS, CONCURRENCY, SCENARIOS
	scripts/bench-matchmaker.sh

bench-forming: ## The cost of forming a rule queue with many tickets waiting, in memory and against Redis (FORMING_TICKETS)
	scripts/bench-forming.sh

bench-time-to-play: ## Time to play, cold vs warm, local and kube-sim, beside the floor of a burst, side by side: the table; the warm runs alternated WARM_ROUNDS times (CLIENTS, MATCH_DURATION, WARM_POOL_MIN, POD_START_DELAY_MS, WARM_ROUNDS)
	scripts/bench-time-to-play.sh

bench-proxy: ## Echo throughput and latency: direct vs matchplane proxy vs HAProxy, side by side in rounds; then the HTTP path (CPU per forwarded request, plain and TLS) against HAProxy mode http (SECONDS_PER_RUN, ROUNDS, BENCH_JSON, CPU_SPLIT)
	scripts/bench-proxy.sh

bench-udp: ## Game datagrams: direct vs through matchplane's proxy, 1 and 64 flows, side by side in rounds (SECONDS_PER_RUN, ROUNDS)
	scripts/bench-udp.sh

conformance: ## A server profile against the hosting contract, part by part, started as the local runtime would (SERVER, MATCHMAKING_CONFIG)
	scripts/conformance.sh

deny: ## The supply-chain policy (deny.toml): licences, duplicate versions, sources, and advisories when RustSec's database can be fetched (ADVISORY_DB: a local clone of it)
	scripts/deny.sh

manifests-check: ## deploy/ and the rendered game-server Pod validate against the pinned Kubernetes schemas
	scripts/check-manifests.sh

fuzz-build: ## Build the cargo-fuzz targets (line codec, tickets, player tokens, join body), as CI does
	scripts/fuzz.sh build

fuzz: ## Run every fuzz target for FUZZ_RUNS executions (10000000)
	scripts/fuzz.sh run

docs-check: ## docs/configuration.md's tables agree with every binary's --help; make help names the variables each target reads; every link of the README and docs/ resolves
	cargo build --workspace --bins --locked
	scripts/check-docs.py

api-check: ## The HTTP API, directly and through the proxy, against docs/openapi.yaml: schemathesis on the local stack (MAX_EXAMPLES, SEED)
	scripts/api-check.sh

monitoring-check: ## deploy/monitoring against promtool (rule checks, every alert's unit test) and Debian's Prometheus scraping a live stack under a swarm: every recording rule and dashboard query returns data, alerts fire (server starts failing, Redis paused) and clear
	scripts/check-monitoring.sh

rollout-check: ## Both backend replicas, then both proxies, replaced one at a time (HAProxy as their Services, kube-sim as the cluster) while a swarm plays: every player plays and no call is retried (CLIENTS, SPAWN_RATE, MATCH_DURATION, SESSION_SIZE)
	scripts/rollout-check.sh

ops-check: ## The cluster targets run as an operator runs them, against stand-ins for docker, kind, kubectl and curl, under dash with macOS-like tools (tag computed once, every kubectl call on its context, Secrets never on a command line, rollouts only for changed images, buildx and pushed digests)
	scripts/check-ops.sh

scripts-check: ## The scripts keep their promises: root-only clone dirs, no leftovers after a failed start, ctrl-c says "interrupted", bad benchmark and api-check settings refused up front
	cargo build --workspace --bins --locked
	scripts/check-scripts.sh


# Cluster operations (kind/ops.sh); the original system's target names. Every kubectl call
# names its context: kind-$KIND_CLUSTER, or KUBE_CONTEXT for another cluster.
up: ## kind cluster, databases and the game stack: everything, ready for a load test (KIND_CLUSTER, IMAGE_TAG, IMAGE_REPOSITORY, PLATFORM, PROXY_TLS)
	kind/ops.sh up

cluster: ## Create the kind cluster, kind v0.24.0 or later (localhost:8080 -> proxy NodePort 30080) (KIND_CLUSTER)
	kind/ops.sh cluster

databases: ## Secrets (random, kept when they exist, never committed or on a command line), Redis (with a password) and PostgreSQL in namespace databases (KUBE_CONTEXT, KIND_CLUSTER)
	kind/ops.sh databases

game-build: ## Build the images (backend, proxy, game-server, loadgen) from deploy/Dockerfile into the local engine, for one platform (IMAGE_TAG, IMAGE_REPOSITORY, PLATFORM)
	kind/ops.sh game-build

game-push: ## Build the images for several platforms with buildx and push them to IMAGE_REPOSITORY; game-backend and game-proxy then deploy their digests (IMAGE_REPOSITORY, IMAGE_TAG, PLATFORM: linux/amd64,linux/arm64)
	kind/ops.sh game-push

game-load-images: ## Load the images into the kind cluster (KIND_CLUSTER, IMAGE_TAG, IMAGE_REPOSITORY)
	kind/ops.sh game-load-images

game-backend: ## Deploy the backend (RUNTIME=kubernetes) with its RBAC and NetworkPolicy, rolled out only when its images changed; PROXY_TLS=1: PUBLIC_TLS=true (KUBE_CONTEXT, KIND_CLUSTER, IMAGE_TAG, IMAGE_REPOSITORY, PUBLIC_HOST, PUBLIC_PORT, PROXY_TLS)
	kind/ops.sh game-backend

game-proxy: ## Deploy the proxy (NodePort 30080), rolled out only when its image changed; PROXY_TLS=1: TLS on its public port from the Secret matchplane-proxy-tls (deploy/tls) (KUBE_CONTEXT, KIND_CLUSTER, IMAGE_TAG, IMAGE_REPOSITORY, PROXY_TLS)
	kind/ops.sh game-proxy

game-testbed: ## game-build, game-load-images, game-backend and game-proxy (KIND_CLUSTER, IMAGE_TAG, IMAGE_REPOSITORY, PLATFORM, PUBLIC_HOST, PUBLIC_PORT, PROXY_TLS)
	kind/ops.sh game-testbed

proxy-port-forward-local: ## Port-forward localhost:8080 to the proxy (clusters without kind's mapping) (KUBE_CONTEXT, KIND_CLUSTER)
	kind/ops.sh proxy-port-forward-local

game-load-local: ## The loadgen image's swarm against localhost:8080 (TARGET_URL, CLIENTS, SPAWN_RATE, MATCH_DURATION, PLAYER_TOKEN_SECRET, KUBE_CONTEXT, KIND_CLUSTER, IMAGE_TAG, IMAGE_REPOSITORY)
	kind/ops.sh game-load-local

status: ## Pods of databases and matchplane, and health through the proxy (TARGET_URL, KUBE_CONTEXT, KIND_CLUSTER)
	kind/ops.sh status

clear-databases: ## Empty Redis and the PostgreSQL history tables in the cluster (KUBE_CONTEXT, KIND_CLUSTER)
	kind/ops.sh clear-databases

ping-redis: ## redis-cli ping in the cluster's Redis (KUBE_CONTEXT, KIND_CLUSTER)
	kind/ops.sh ping-redis

ping-postgres: ## pg_isready in the cluster's PostgreSQL (KUBE_CONTEXT, KIND_CLUSTER)
	kind/ops.sh ping-postgres

free-local-db-ports: ## Stop kubectl port-forwards holding local ports 6379, 5432, 8080
	kind/ops.sh free-local-db-ports

down: ## Delete the kind cluster and remove the images make game-build made (KIND_CLUSTER)
	kind/ops.sh down

ci: ## Run what CI runs
	bash .ci/run
