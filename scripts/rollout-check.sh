#!/usr/bin/env bash
# `make rollout-check` (CI runs it): a rolling restart of both backend replicas and then both
# proxies, one Pod at a time as a Deployment's rollout does, while a swarm plays through them.
# Nothing may be dropped: every player plays, and no API call or game connection has to be
# retried (the swarm counts each retry; a refused connection or a 5xx would be one).
#
# The cluster is kube-sim (RUNTIME=kubernetes, so matches outlive the replica that started
# them); HAProxy stands in for the two Services, balancing new connections over the ready
# replicas only (an HTTP check of /health every 200 ms, out after two failures, as endpoints
# drop a Pod whose readiness fails) and leaving established connections where they are, as
# kube-proxy does. Each stopped replica is replaced by a new one under a new INSTANCE_ID.
# CLIENTS (240), SPAWN_RATE (8/s), MATCH_DURATION (4 s), SESSION_SIZE (4).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stack.sh
. scripts/stack.sh

clients=${CLIENTS:-240} rate=${SPAWN_RATE:-8} duration=${MATCH_DURATION:-4} size=${SESSION_SIZE:-4}
for setting in "CLIENTS=$clients" "SESSION_SIZE=$size"; do
  [[ ${setting#*=} =~ ^[1-9][0-9]*$ ]] || mp_die "make rollout-check needs ${setting%%=*} to be a whole number above 0, not '${setting#*=}'."
done
for setting in "SPAWN_RATE=$rate" "MATCH_DURATION=$duration"; do
  if ! [[ ${setting#*=} =~ ^[0-9]+([.][0-9]+)?$ ]] || [[ ${setting#*=} =~ ^0+([.]0+)?$ ]]; then
    mp_die "make rollout-check needs ${setting%%=*} to be a number above 0, not '${setting#*=}'."
  fi
done
command -v curl >/dev/null 2>&1 || mp_apt_install curl || mp_die "make rollout-check needs curl: install it with 'sudo apt-get install -y curl' and run this again."
command -v haproxy >/dev/null 2>&1 || mp_apt_install haproxy || mp_die "make rollout-check needs haproxy: install it with 'sudo apt-get install -y haproxy' and run this again."
mp_need_redis
mp_need_postgres
mp_build
bin=$MP_BIN
out=.run/rollout-check
# One run's files only: an interrupted run's logs never sit beside an earlier run's summary.
rm -rf "$out"
mkdir -p "$out"
run=$(mkdir -p .run && cd .run && pwd)/rollout-check-$$
mkdir -p "$run"

declare -A pid=()
# shellcheck disable=SC2317  # run by the EXIT trap
stop_all() {
  local name
  # The front first, the proxies, the replicas, the Service, then kube-sim (which kills the Pods).
  for name in swarm front proxy-1 proxy-2 backend-1 backend-2 service kube-sim; do
    [ -n "${pid[$name]:-}" ] || continue
    kill -TERM "${pid[$name]}" 2>/dev/null || true
  done
  for name in "${!pid[@]}"; do
    for _ in $(seq 1 100); do kill -0 "${pid[$name]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${pid[$name]}" 2>/dev/null || true
  done
  mp_stop_services
  cp "$run"/*.log "$out"/ 2>/dev/null || true
  [ "${MP_KEEP_RUN_DIR:-0}" = 1 ] || rm -rf "$run"
}
mp_start_services "$run/services"
trap stop_all EXIT
trap 'exit 130' INT TERM
secret=$(mp_random) admin=$(mp_random) player_secret=$(mp_random)
read -r sim_port backend_1 backend_2 service_port proxy_1 proxy_2 front_port < <(mp_free_ports 7)
declare -A port=([backend-1]=$backend_1 [backend-2]=$backend_2 [proxy-1]=$proxy_1 [proxy-2]=$proxy_2)

# The game servers' NetworkPolicy is enforced on every connection to a Pod.
mapfile -t network < <(mp_sim_network_flags "$bin")
TICKET_SECRET="$secret" RUST_LOG=warn "$bin/kube-sim" --bind "127.0.0.1:$sim_port" \
  --kubeconfig "$run/kubeconfig" --namespace games --game-server-bin "$bin/game-server" \
  --secret matchplane-ticket/ticket-secret=env:TICKET_SECRET --start-delay-ms 300 \
  --rbac deploy/backend/rbac.yaml "${network[@]}" --log-dir "$run/pods" >"$run/kube-sim.log" 2>&1 &
pid[kube-sim]=$!
mp_wait_http "http://127.0.0.1:$sim_port/healthz" kube-sim "${pid[kube-sim]}" "$run/kube-sim.log"

# The two Services: new connections to ready replicas only; established ones stay.
cat >"$run/haproxy.cfg" <<CFG
global
  maxconn 8192
  stats socket $run/haproxy.sock
defaults
  mode tcp
  balance roundrobin
  timeout connect 2s
  timeout client 120s
  timeout server 120s
  option httpchk GET /health
  http-check expect status 200
  default-server check inter 200ms fall 2 rise 2
listen backend-service
  bind 127.0.0.1:$service_port
  server backend-1 127.0.0.1:$backend_1
  server backend-2 127.0.0.1:$backend_2
listen proxy-service
  bind 127.0.0.1:$front_port
  server proxy-1 127.0.0.1:$proxy_1
  server proxy-2 127.0.0.1:$proxy_2
CFG
haproxy -f "$run/haproxy.cfg" -db >"$run/haproxy.log" 2>&1 &
pid[service]=$!

generation=0
start() {
  local name=$1 log
  generation=$((generation + 1))
  log="$run/$name-$generation.log"
  case "$name" in
    backend-*)
      env RUST_LOG=info BIND="127.0.0.1:${port[$name]}" REDIS_URL="$MP_REDIS_URL" DATABASE_URL="$MP_DATABASE_URL" \
        TICKET_SECRET="$secret" ADMIN_TOKEN="$admin" PLAYER_TOKEN_SECRET="$player_secret" RUNTIME=kubernetes NAMESPACE=games \
        BACKEND_INTERNAL_URL="http://127.0.0.1:$service_port" SESSION_SIZE="$size" \
        PUBLIC_HOST=127.0.0.1 PUBLIC_PORT="$front_port" INSTANCE_ID="$name-$generation" \
        SHUTDOWN_DELAY_SECONDS=2 SHUTDOWN_GRACE_SECONDS=5 FINISHED_POD_GRACE_SECONDS=2 \
        "$bin/backend" --kubeconfig "$run/kubeconfig" >"$log" 2>&1 &
      ;;
    proxy-*)
      env RUST_LOG=info BIND="127.0.0.1:${port[$name]}" BACKEND_URL="http://127.0.0.1:$service_port" \
        REDIS_URL="$MP_REDIS_URL" TICKET_SECRET="$secret" PLAYER_TOKEN_SECRET="$player_secret" \
        RATE_LIMIT_PER_SECOND=0 PLAYER_RATE_LIMIT_PER_SECOND=0 SHUTDOWN_DELAY_SECONDS=2 DRAIN_SECONDS=20 \
        "$bin/proxy" >"$log" 2>&1 &
      ;;
  esac
  pid[$name]=$!
  MP_STACK_DIR=$run mp_wait_http "http://127.0.0.1:${port[$name]}/health" "$name" "${pid[$name]}" "$log"
}
# Replaces NAME as a rollout does: SIGTERM, wait for the process to end, start its successor.
roll() {
  local name=$1 began
  began=$(date +%s.%N)
  kill -TERM "${pid[$name]}"
  for _ in $(seq 1 600); do kill -0 "${pid[$name]}" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "${pid[$name]}" 2>/dev/null; then
    echo "rollout-check FAILED: $name did not stop within 60 s of SIGTERM" >&2
    exit 1
  fi
  wait "${pid[$name]}" || true
  start "$name"
  echo "rolled $name in $(python3 -c "import time; print(f'{time.time() - $began:.1f}')") s"
}
for name in backend-1 backend-2 proxy-1 proxy-2; do start "$name"; done
# Every replica in rotation before the players come (HAProxy's checks saw each up twice), as
# a Deployment is ready before traffic reaches it.
in_rotation() {
  python3 - "$run/haproxy.sock" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"show stat\n")
out = b""
while chunk := s.recv(65536):
    out += chunk
rows = [line.split(",") for line in out.decode().splitlines() if line and not line.startswith("#")]
servers = [r for r in rows if r[1] not in ("FRONTEND", "BACKEND")]
sys.exit(0 if len(servers) == 4 and all(r[17] == "UP" for r in servers) else 1)
PY
}
for _ in $(seq 1 100); do in_rotation && break; sleep 0.1; done
in_rotation || { echo "rollout-check FAILED: HAProxy never put every replica in rotation (see $run/haproxy.log)" >&2; exit 1; }
echo "services: backends 127.0.0.1:$service_port (HAProxy over $backend_1, $backend_2), proxies 127.0.0.1:$front_port (over $proxy_1, $proxy_2)"

echo "== swarm: $clients clients at $rate/s, $duration s matches, while both backends and then both proxies are replaced one at a time =="
PLAYER_TOKEN_SECRET="$player_secret" "$bin/loadgen" swarm --target-url "http://127.0.0.1:$front_port" \
  --clients "$clients" --spawn-rate "$rate" --match-duration "$duration" --session-size "$size" \
  --json "$out/summary.json" --chart "$out/latency.svg" >"$run/swarm.log" 2>&1 &
pid[swarm]=$!
sleep 3
for name in backend-1 backend-2 proxy-1 proxy-2; do
  roll "$name"
  kill -0 "${pid[swarm]}" 2>/dev/null || { echo "rollout-check FAILED: the swarm ended before the rollout did; raise CLIENTS or lower SPAWN_RATE" >&2; exit 1; }
done
status=0
wait "${pid[swarm]}" || status=$?
unset 'pid[swarm]'
tail -n 25 "$run/swarm.log"
# Every call the replicas made (their starts' reconciles, the claims, the reapers) is one the
# shipped Role allows.
mp_sim_refused "http://127.0.0.1:$sim_port" || status=1
python3 - "$out/summary.json" "$clients" <<'PY' || status=1
import json, sys
report = json.load(open(sys.argv[1]))
clients = int(sys.argv[2])
problems = []
if report["ok"] != clients:
    problems.append(f"{clients - report['ok']} of {clients} players did not play: {report['outcomes']}")
if report["retries"]:
    problems.append(f"{report['retries']} API calls or game connections had to be retried")
if report["rejoins"]:
    problems.append(f"{report['rejoins']} players had to join again")
for p in problems:
    print("rollout-check: " + p)
print(f"rollout-check: {report['ok']} of {clients} players played, {report['retries']} retries, {report['sessions']} sessions")
sys.exit(1 if problems else 0)
PY
if [ "$status" -eq 0 ]; then
  echo "rollout-check passed: both backends and both proxies replaced under load, nothing dropped"
else
  echo "rollout-check FAILED (logs in $out)"
fi
exit "$status"
