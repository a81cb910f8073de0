#!/usr/bin/env bash
# Three regions on this machine: each a kube-sim cluster (the namespace, Role and ticket Secret
# deploy/ makes, and its NetworkPolicy enforced) with its own proxy, behind backend replicas
# with REGIONS (RUNTIME=kubernetes), sharing one Redis and PostgreSQL (mp_start_services first;
# with its Sentinels, MP_REDIS_SENTINELS=1, every backend and proxy follows them).
# Source it, then:
#   mp_regions_start RUN_DIR QUEUE_FILE REPLICAS   # starts everything; the arrays below say where
#   mp_cluster_start REGION / mp_proxy_start REGION  # (again) one region's cluster or proxy
#   mp_backend_start INDEX INSTANCE_ID               # (again) replica INDEX (0-based)
#   mp_probe_regions                                 # name=host:port,... of every region's proxy
#   mp_regions_stop                                  # proxies, replicas, then clusters
# Sets MP_REGIONS (eu us asia), MP_SIM_PID/MP_SIM_PORT/MP_REGION_PROXY_PID/MP_REGION_PROXY_PORT
# (by region), MP_BACKEND_PIDS/MP_BACKEND_PORTS (by replica), MP_REGION_SECRETS (ticket, admin,
# service, player token keys). WARM_POOL_MIN (4) warm Pods per region, POD_START_DELAY_MS (500),
# REGION_DOWN_AFTER_SECONDS (3), REGION_UP_AFTER_SECONDS (5).

MP_REGIONS=(eu us asia)
declare -A MP_SIM_PID MP_SIM_PORT MP_REGION_PROXY_PID MP_REGION_PROXY_PORT
MP_BACKEND_PIDS=()
MP_BACKEND_PORTS=()

mp_cluster_start() {
  local region=$1
  TICKET_SECRET="$MP_RS_TICKET" RUST_LOG="${RUST_LOG:-info}" "$MP_BIN/kube-sim" --bind "127.0.0.1:${MP_SIM_PORT[$region]}" \
    --kubeconfig "$MP_RS_DIR/kubeconfig-$region" --namespace games --game-server-bin "$MP_BIN/game-server" \
    --secret matchplane-ticket/ticket-secret=env:TICKET_SECRET --start-delay-ms "${POD_START_DELAY_MS:-500}" \
    --rbac deploy/backend/rbac.yaml "${MP_RS_NETWORK[@]}" >>"$MP_RS_DIR/kube-sim-$region.log" 2>&1 &
  MP_SIM_PID[$region]=$!
  MP_STACK_DIR=$MP_RS_DIR mp_wait_http "http://127.0.0.1:${MP_SIM_PORT[$region]}/healthz" "kube-sim $region" "$!" "$MP_RS_DIR/kube-sim-$region.log"
}

# The region's proxy forwards the API to the first replica.
mp_proxy_start() {
  local region=$1
  env RUST_LOG="${RUST_LOG:-info}" BIND="127.0.0.1:${MP_REGION_PROXY_PORT[$region]}" BACKEND_URL="http://127.0.0.1:${MP_BACKEND_PORTS[0]}" \
    REDIS_URL="$MP_REDIS_URL" REDIS_SENTINELS="${MP_REDIS_SENTINEL_ADDRS:-}" REDIS_SENTINEL_MASTER="$MP_REDIS_SENTINEL_MASTER" \
    TICKET_SECRET="$MP_RS_TICKET" PLAYER_TOKEN_SECRET="$MP_RS_PLAYER" RATE_LIMIT_PER_SECOND=0 \
    PLAYER_RATE_LIMIT_PER_SECOND=0 DRAIN_SECONDS=1 "$MP_BIN/proxy" >>"$MP_RS_DIR/proxy-$region.log" 2>&1 &
  MP_REGION_PROXY_PID[$region]=$!
  MP_STACK_DIR=$MP_RS_DIR mp_wait_http "http://127.0.0.1:${MP_REGION_PROXY_PORT[$region]}/health" "proxy $region" "$!" "$MP_RS_DIR/proxy-$region.log"
}

mp_backend_start() {
  local index=$1 instance=$2 port=${MP_BACKEND_PORTS[$1]}
  env RUST_LOG="${RUST_LOG:-info}" BIND="127.0.0.1:$port" REDIS_URL="$MP_REDIS_URL" DATABASE_URL="$MP_DATABASE_URL" \
    REDIS_SENTINELS="${MP_REDIS_SENTINEL_ADDRS:-}" REDIS_SENTINEL_MASTER="$MP_REDIS_SENTINEL_MASTER" \
    TICKET_SECRET="$MP_RS_TICKET" ADMIN_TOKEN="$MP_RS_ADMIN" SERVICE_TOKEN="$MP_RS_SERVICE" PLAYER_TOKEN_SECRET="$MP_RS_PLAYER" \
    RUNTIME=kubernetes NAMESPACE=games BACKEND_INTERNAL_URL="http://127.0.0.1:$port" MATCHMAKING_CONFIG="$MP_RS_QUEUES" \
    REGIONS="$MP_RS_DIR/regions.yaml" REGION_DOWN_AFTER_SECONDS="${REGION_DOWN_AFTER_SECONDS:-3}" \
    REGION_UP_AFTER_SECONDS="${REGION_UP_AFTER_SECONDS:-5}" KUBE_API_TIMEOUT_SECONDS=3 \
    INSTANCE_ID="$instance" SHUTDOWN_GRACE_SECONDS=5 FINISHED_POD_GRACE_SECONDS=2 \
    "$MP_BIN/backend" >>"$MP_RS_DIR/backend-$((index + 1)).log" 2>&1 &
  MP_BACKEND_PIDS[index]=$!
  MP_STACK_DIR=$MP_RS_DIR mp_wait_http "http://127.0.0.1:$port/health" "backend replica $((index + 1))" "$!" "$MP_RS_DIR/backend-$((index + 1)).log"
}

mp_regions_start() {
  local dir=$1 queues=$2 replicas=$3 i region
  MP_RS_DIR=$dir MP_RS_QUEUES=$queues
  MP_RS_TICKET=$(mp_random) MP_RS_ADMIN=$(mp_random) MP_RS_SERVICE=$(mp_random) MP_RS_PLAYER=$(mp_random)
  local ports
  read -r -a ports < <(mp_free_ports $((6 + replicas)))
  for i in 0 1 2; do
    MP_SIM_PORT[${MP_REGIONS[i]}]=${ports[i]}
    MP_REGION_PROXY_PORT[${MP_REGIONS[i]}]=${ports[i + 3]}
  done
  for ((i = 0; i < replicas; i++)); do MP_BACKEND_PORTS[i]=${ports[6 + i]}; done
  mapfile -t MP_RS_NETWORK < <(mp_sim_network_flags "$MP_BIN")
  for region in "${MP_REGIONS[@]}"; do mp_cluster_start "$region"; done
  {
    echo "regions:"
    for region in "${MP_REGIONS[@]}"; do
      echo "  - name: $region"
      echo "    proxy: 127.0.0.1:${MP_REGION_PROXY_PORT[$region]}"
      echo "    target: {context: kube-sim, kubeconfig: '$dir/kubeconfig-$region'}"
      echo "    warm_pool: {min: ${WARM_POOL_MIN:-4}, max: $((${WARM_POOL_MIN:-4} * 3))}"
    done
  } >"$dir/regions.yaml"
  for ((i = 0; i < replicas; i++)); do mp_backend_start "$i" "replica-$((i + 1))"; done
  for region in "${MP_REGIONS[@]}"; do mp_proxy_start "$region"; done
  # Each region's warm Pods are kept ahead of demand: let them fill before the players come.
  local idle=0
  for _ in $(seq 1 300); do
    idle=$(curl -fsS "http://127.0.0.1:${MP_BACKEND_PORTS[0]}/health" | python3 -c 'import json,sys; print((json.load(sys.stdin).get("warm_servers") or {}).get("idle", 0))')
    [ "$idle" -ge $((${WARM_POOL_MIN:-4} * 3)) ] && break
    sleep 0.1
  done
  echo "warm Pods idle across the regions: $idle"
}

# mp_probe_regions: every region's proxy as `name=host:port,...`, for loadgen's --probe-regions.
mp_probe_regions() {
  local region proxies=()
  for region in "${MP_REGIONS[@]}"; do proxies+=("$region=127.0.0.1:${MP_REGION_PROXY_PORT[$region]}"); done
  (IFS=,; echo "${proxies[*]}")
}

mp_regions_stop() {
  local pid
  for pid in "${MP_REGION_PROXY_PID[@]}" "${MP_BACKEND_PIDS[@]}" "${MP_SIM_PID[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${MP_REGION_PROXY_PID[@]}" "${MP_BACKEND_PIDS[@]}" "${MP_SIM_PID[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
