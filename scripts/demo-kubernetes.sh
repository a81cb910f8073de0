#!/usr/bin/env bash
# `make demo-kubernetes`: the demo's stack and swarm with RUNTIME=kubernetes and two backend
# replicas, against kube-sim (a Kubernetes API server and kubelet on this machine, reached
# through an ordinary kubeconfig). Every session gets a Pod; kube-sim's kubelet runs the real
# game-server for it. Ends in the demo's summary plus the Pod figures; exits non-zero on any
# failure and stops everything it started. CLIENTS (60), MATCH_DURATION (5 s), SPAWN_RATE (0),
# SESSION_SIZE (12), POD_START_DELAY_MS (2000: simulated scheduling and image pull),
# WARM_POOL_MIN/WARM_POOL_MAX (warm Pods for the whole cluster, when set), NETWORK_POLICY
# (enforce: kube-sim enforces deploy/'s game-server NetworkPolicy; off).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stack.sh
. scripts/stack.sh

case ${NETWORK_POLICY:-enforce} in
  enforce | off) ;;
  *) mp_die "make demo-kubernetes needs NETWORK_POLICY to be enforce or off, not '${NETWORK_POLICY}'." ;;
esac
command -v cargo >/dev/null 2>&1 || mp_die "make demo-kubernetes needs the Rust toolchain (cargo): install it from rustup.rs and run this again."
command -v curl >/dev/null 2>&1 || mp_apt_install curl || mp_die "make demo-kubernetes needs curl: install it with 'sudo apt-get install -y curl' and run this again."
mp_need_redis
mp_need_postgres
echo "== building =="
mp_build
bin=$MP_BIN
out=.run/demo-kubernetes
# One run's files only: an interrupted run's logs never sit beside an earlier run's summary.
rm -rf "$out"
mkdir -p "$out"
run=$(mkdir -p .run && cd .run && pwd)/demo-kubernetes-$$
mkdir -p "$run"
pids=()
# shellcheck disable=SC2317  # run by the EXIT trap
stop_all() {
  local i pid
  # Last started, first stopped: the proxy, the replicas, then kube-sim (which kills the Pods).
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid=${pids[i]}
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  pids=()
  mp_stop_services
  cp "$run"/*.log "$out"/ 2>/dev/null || true
  [ "${MP_KEEP_RUN_DIR:-0}" = 1 ] || rm -rf "$run"
}
started=$(date +%s.%N)
echo "== starting Redis, PostgreSQL, kube-sim, two backend replicas (RUNTIME=kubernetes) and the proxy =="
mp_start_services "$run/services"
# After mp_start_services, whose own EXIT trap this replaces (stop_all stops the services too).
trap stop_all EXIT
trap 'exit 130' INT TERM
secret=$(mp_random)
admin=$(mp_random)
player_secret=$(mp_random)
# Every port at once, so that none is handed out twice before its server binds it.
read -r -a ports < <(mp_free_ports 4)
sim_port=${ports[0]} proxy_port=${ports[1]}
# The game servers' NetworkPolicy is enforced on every connection to a Pod, unless
# NETWORK_POLICY=off (the time-to-play benchmark: kube-sim's relay is not part of matchplane).
network=()
[ "${NETWORK_POLICY:-enforce}" = off ] || mapfile -t network < <(mp_sim_network_flags "$bin")
TICKET_SECRET="$secret" RUST_LOG="${RUST_LOG:-info}" "$bin/kube-sim" --bind "127.0.0.1:$sim_port" \
  --kubeconfig "$run/kubeconfig" --namespace games --game-server-bin "$bin/game-server" \
  --secret matchplane-ticket/ticket-secret=env:TICKET_SECRET --start-delay-ms "${POD_START_DELAY_MS:-2000}" \
  --rbac deploy/backend/rbac.yaml "${network[@]}" --log-dir "$run/pods" >"$run/kube-sim.log" 2>&1 &
pids+=($!)
mp_wait_http "http://127.0.0.1:$sim_port/healthz" kube-sim "$!" "$run/kube-sim.log"
sim="http://127.0.0.1:$sim_port"
backends=()
for replica in 1 2; do
  port=${ports[replica + 1]}
  env RUST_LOG="${RUST_LOG:-info}" BIND="127.0.0.1:$port" REDIS_URL="$MP_REDIS_URL" DATABASE_URL="$MP_DATABASE_URL" \
    TICKET_SECRET="$secret" ADMIN_TOKEN="$admin" PLAYER_TOKEN_SECRET="$player_secret" RUNTIME=kubernetes NAMESPACE=games \
    BACKEND_INTERNAL_URL="http://127.0.0.1:$port" SESSION_SIZE="${SESSION_SIZE:-12}" \
    PUBLIC_HOST=127.0.0.1 PUBLIC_PORT="$proxy_port" INSTANCE_ID="replica-$replica" SHUTDOWN_GRACE_SECONDS=5 \
    FINISHED_POD_GRACE_SECONDS=2 ${WARM_POOL_MIN:+WARM_POOL_MIN=$WARM_POOL_MIN} ${WARM_POOL_MAX:+WARM_POOL_MAX=$WARM_POOL_MAX} \
    "$bin/backend" --kubeconfig "$run/kubeconfig" >"$run/backend-$replica.log" 2>&1 &
  pids+=($!)
  MP_STACK_DIR=$run mp_wait_http "http://127.0.0.1:$port/health" "backend replica $replica" "$!" "$run/backend-$replica.log"
  backends+=("http://127.0.0.1:$port")
done
# The proxy forwards HTTP to replica 1; both replicas match from the one Redis queue and
# start Pods for the sessions they form.
env RUST_LOG="${RUST_LOG:-info}" BIND="127.0.0.1:$proxy_port" BACKEND_URL="${backends[0]}" REDIS_URL="$MP_REDIS_URL" \
  TICKET_SECRET="$secret" PLAYER_TOKEN_SECRET="$player_secret" RATE_LIMIT_PER_SECOND=0 DRAIN_SECONDS=5 \
  "$bin/proxy" >"$run/proxy.log" 2>&1 &
pids+=($!)
MP_STACK_DIR=$run mp_wait_http "http://127.0.0.1:$proxy_port/health" proxy "$!" "$run/proxy.log"
echo "proxy http://127.0.0.1:$proxy_port, backends ${backends[*]}, kube-sim $sim (kubeconfig $run/kubeconfig)"
# Warm Pods are kept ahead of demand: let the pool fill before the players come.
mp_wait_warm "${backends[0]}"

echo "== swarm: ${CLIENTS:-60} clients, ${MATCH_DURATION:-5} s matches, pods start in ${POD_START_DELAY_MS:-2000} ms =="
status=0
mp_run_swarm env PLAYER_TOKEN_SECRET="$player_secret" "$bin/loadgen" swarm --target-url "http://127.0.0.1:$proxy_port" --clients "${CLIENTS:-60}" \
  --spawn-rate "${SPAWN_RATE:-0}" --match-duration "${MATCH_DURATION:-5}" \
  --session-size "${SESSION_SIZE:-12}" --json "$out/summary.json" --chart "$out/latency.svg" || status=$?

# Every session's Pod goes once its session is over (finished Pods are kept 2 s here): wait
# for that, then compare kube-sim's record of each Pod with PostgreSQL's record of each
# session. Warm Pods never claimed stay for the next players.
for _ in $(seq 1 300); do
  left=$(curl -fsS "$sim/sim/pods" | python3 -c 'import json,sys; print(sum(1 for p in json.load(sys.stdin) if p["deleted_ms"] is None and p["session"]))')
  [ "$left" = 0 ] && break
  sleep 0.1
done
for _ in $(seq 1 50); do
  [ "$(curl -fsS "${backends[0]}/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["history_backlog"])')" = 0 ] && break
  sleep 0.1
done
curl -fsS "$sim/sim/pods" >"$out/pods.json"
curl -fsS "$sim/sim/calls" >"$out/calls.json"
# kube-sim held every call to the backend's shipped Role, as a real API server would.
mp_sim_refused "$sim" || status=1
for backend in "${backends[@]}"; do
  curl -fsS "$backend/health" | python3 -c 'import json,sys; w = json.load(sys.stdin).get("warm_servers"); w and print("warm pods (" + sys.argv[1] + "): " + ", ".join(f"{k} {v}" for k, v in w.items()))' "$backend"
done
"$MP_PG_BIN/psql" "$MP_DATABASE_URL" -tAc "SELECT json_agg(json_build_object('session', session_id, 'ended_ms', (extract(epoch from ended_at) * 1000)::bigint, 'reason', end_reason, 'instance', backend_instance)) FROM matches" >"$out/sessions.json"
python3 - "$out/pods.json" "$out/sessions.json" "$out/calls.json" replica-1 replica-2 <<'PY' || status=1
import json, sys
records = json.load(open(sys.argv[1]))
sessions = json.load(open(sys.argv[2])) or []
calls = json.load(open(sys.argv[3]))
# Pods that served a session (created for it, or warm and claimed by it); warm ones never
# claimed are the pool's.
pods = [p for p in records if p["session"]]
idle_warm = [p for p in records if not p["session"]]
warm_used = sum(1 for p in pods if p["name"].startswith("mp-gs-warm-"))
ended = {s["session"]: s for s in sessions}
# Every replica is named, one that formed nothing too (a replica idle while the other forms
# every session is worth seeing).
by_replica = {instance: 0 for instance in sys.argv[4:]}
for s in sessions:
    by_replica[s["instance"]] = by_replica.get(s["instance"], 0) + 1
print(f"sessions: {len(sessions)} ({', '.join(f'{k}: {v}' for k, v in sorted(by_replica.items()))}); "
      f"end reasons: {', '.join(sorted({str(s['reason']) for s in sessions}))}")
# What the sessions cost the API server: every call the replicas made, per session.
verbs = {}
for c in calls:
    verbs[c["verb"]] = verbs.get(c["verb"], 0) + c["allowed"] + c["forbidden"]
total = sum(verbs.values())
if sessions:
    print(f"API calls: {total} for {len(sessions)} sessions, {total / len(sessions):.1f} per session "
          f"({', '.join(f'{v} {n / len(sessions):.1f}' for v, n in sorted(verbs.items()))})")
print(f"pods: {len(pods)} for {len(sessions)} sessions ({warm_used} warm, {len(pods) - warm_used} cold); still present: {sum(1 for p in pods if p['deleted_ms'] is None)}; "
      f"warm pods never claimed: {len(idle_warm)}")
after = [p["deleted_ms"] - ended[p["session"]]["ended_ms"] for p in pods
         if p["deleted_ms"] and p["session"] in ended and ended[p["session"]]["ended_ms"]]
if after:
    print(f"a pod's life after its session ended: max {max(after)} ms, median {sorted(after)[len(after) // 2]} ms (finished pods kept 2 s)")
# A completed session's Pod reported and exits by itself: it is kept FINISHED_POD_GRACE_SECONDS
# (2 s here) for `kubectl logs`, not deleted the moment its session ends.
completed = [p["deleted_ms"] - ended[p["session"]]["ended_ms"] for p in pods
             if p["deleted_ms"] and p["session"] in ended and ended[p["session"]]["reason"] == "completed"]
kept = not completed or min(completed) >= 1500
if not kept:
    print(f"a completed session's pod was deleted {min(completed)} ms after its session ended: not kept for FINISHED_POD_GRACE_SECONDS (2 s)")
ok = len(pods) == len(sessions) and all(p["deleted_ms"] for p in pods) and kept
sys.exit(0 if ok else 1)
PY
elapsed=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
echo "demo-kubernetes wall time after the build: ${elapsed} s"
if [ "$status" -eq 0 ]; then echo "demo-kubernetes passed: chart at $out/latency.svg, report at $out/summary.json"; else echo "demo-kubernetes FAILED"; fi
exit "$status"
