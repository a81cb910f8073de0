#!/usr/bin/env bash
# `make demo-regions`: three regions on this machine, each a kube-sim cluster with its own proxy
# and warm Pods, behind two backend replicas with REGIONS; a ranked swarm whose players measure
# latencies drawn per region (eu, us, asia) joins through eu's proxy and plays through the proxy
# of its match's region. Mid-run one region's cluster and proxy are killed (KILL_REGION, us by
# default; none to kill nothing) and brought back KILL_FOR_SECONDS later, empty: its sessions
# fail, their players are requeued and play elsewhere, and the region comes back by itself.
# Ends in the swarm's summary plus sessions and time to play per region, before, during and
# after the outage; exits non-zero on any failure and stops everything it started.
# CLIENTS (480), SPAWN_RATE (12 players/s), MATCH_DURATION (8 s), KILL_REGION (us),
# KILL_AT_SECONDS (12 after the first join), KILL_FOR_SECONDS (12), POD_START_DELAY_MS (500),
# WARM_POOL_MIN (4 warm Pods per region).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stack.sh
. scripts/stack.sh

kill_region=${KILL_REGION:-us}
case $kill_region in
  eu) mp_die "KILL_REGION=eu: the swarm joins through eu's proxy; kill us or asia (or none)." ;;
  us | asia | none) ;;
  *) mp_die "KILL_REGION must be us, asia or none, got '$kill_region'." ;;
esac
for name in CLIENTS SPAWN_RATE MATCH_DURATION KILL_AT_SECONDS KILL_FOR_SECONDS POD_START_DELAY_MS WARM_POOL_MIN; do
  value=${!name:-}
  [ -z "$value" ] || [[ $value =~ ^[0-9]+$ ]] || mp_die "$name must be a whole number, got '$value'."
done
command -v cargo >/dev/null 2>&1 || mp_die "make demo-regions needs the Rust toolchain (cargo): install it from rustup.rs and run this again."
command -v curl >/dev/null 2>&1 || mp_apt_install curl || mp_die "make demo-regions needs curl: install it with 'sudo apt-get install -y curl' and run this again."
mp_need_redis
mp_need_postgres
echo "== building =="
mp_build
out=.run/demo-regions
rm -rf "$out"
mkdir -p "$out"
run=$(mkdir -p .run && cd .run && pwd)/demo-regions-$$
mkdir -p "$run"
# shellcheck source=scripts/regions-stack.sh
. scripts/regions-stack.sh
# shellcheck disable=SC2317  # run by the EXIT trap
stop_all() {
  mp_regions_stop
  mp_stop_services
  cp "$run"/*.log "$out"/ 2>/dev/null || true
  [ "${MP_KEEP_RUN_DIR:-0}" = 1 ] || rm -rf "$run"
}
echo "== starting Redis, PostgreSQL, three kube-sim clusters, two backend replicas (REGIONS) and three proxies =="
mp_start_services "$run/services"
trap stop_all EXIT
trap 'exit 130' INT TERM
# The ranked queue of examples/queues.yaml; the few tickets a run leaves that cannot make a
# session end timed_out after 60 s.
sed 's/max_wait_seconds: 120/max_wait_seconds: 60/' examples/queues.yaml >"$run/queues.yaml"
mp_regions_start "$run" "$run/queues.yaml" 2
backend="http://127.0.0.1:${MP_BACKEND_PORTS[0]}"
for region in "${MP_REGIONS[@]}"; do
  echo "region $region: proxy http://127.0.0.1:${MP_REGION_PROXY_PORT[$region]}, kube-sim http://127.0.0.1:${MP_SIM_PORT[$region]}"
done

clients=${CLIENTS:-480}
spawn_rate=${SPAWN_RATE:-12}
echo "== swarm: $clients ranked players at $spawn_rate/s, ${MATCH_DURATION:-8} s matches; killing $kill_region at ${KILL_AT_SECONDS:-12} s for ${KILL_FOR_SECONDS:-12} s =="
status=0
started_ms=$(date +%s%3N)
env PLAYER_TOKEN_SECRET="$MP_RS_PLAYER" SERVICE_TOKEN="$MP_RS_SERVICE" "$MP_BIN/loadgen" swarm --scenario ranked \
  --target-url "http://127.0.0.1:${MP_REGION_PROXY_PORT[eu]}" --probe-regions "$(mp_probe_regions)" --clients "$clients" --spawn-rate "$spawn_rate" \
  --match-duration "${MATCH_DURATION:-8}" --session-size 6 --min-session-size 6 --max-timed-out-percent 10 \
  --json "$out/summary.json" --chart "$out/latency.svg" >"$run/swarm.out" 2>&1 &
swarm=$!
killed_ms='' restored_ms='' up_ms=''
if [ "$kill_region" != none ]; then
  sleep "${KILL_AT_SECONDS:-12}"
  # The region's cluster and proxy go at once: its Pods die with its kubelet.
  killed_ms=$(date +%s%3N)
  kill -KILL "${MP_REGION_PROXY_PID[$kill_region]}" 2>/dev/null || true
  kill -TERM "${MP_SIM_PID[$kill_region]}" 2>/dev/null || true
  wait "${MP_SIM_PID[$kill_region]}" "${MP_REGION_PROXY_PID[$kill_region]}" 2>/dev/null || true
  echo "$(date +%T) killed $kill_region (its cluster and its proxy)"
  for _ in $(seq 1 200); do
    [ "$(curl -fsS "$backend/health" | python3 -c "import json,sys; print(json.load(sys.stdin)['regions']['$kill_region']['up'])")" = False ] && break
    sleep 0.1
  done
  echo "$(date +%T) the backend has $kill_region down: $(curl -fsS "$backend/health" | python3 -c "import json,sys; r = json.load(sys.stdin)['regions']['$kill_region']; print(r.get('reason'))")"
  sleep "${KILL_FOR_SECONDS:-12}"
  mp_cluster_start "$kill_region"
  mp_proxy_start "$kill_region"
  restored_ms=$(date +%s%3N)
  echo "$(date +%T) $kill_region's cluster (empty) and proxy are back"
  for _ in $(seq 1 600); do
    [ "$(curl -fsS "$backend/health" | python3 -c "import json,sys; print(json.load(sys.stdin)['regions']['$kill_region']['up'])")" = True ] && break
    sleep 0.1
  done
  up_ms=$(date +%s%3N)
  echo "$(date +%T) the backend has $kill_region up again, $(((up_ms - restored_ms) / 1000)) s after it answered"
fi
wait "$swarm" || status=$?
cat "$run/swarm.out"
for _ in $(seq 1 100); do
  [ "$(curl -fsS "$backend/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["history_backlog"])')" = 0 ] && break
  sleep 0.1
done
"$MP_PG_BIN/psql" "$MP_DATABASE_URL" -tAc "SELECT coalesce(json_agg(json_build_object('region', region, 'reason', end_reason, 'status', status)), '[]') FROM matches" >"$out/sessions.json"
python3 - "$out/summary.json" "$out/sessions.json" "$started_ms" "${killed_ms:-0}" "${up_ms:-0}" "$kill_region" <<'PY' || status=1
import json, sys
summary = json.load(open(sys.argv[1]))
sessions = json.load(open(sys.argv[2]))
started, killed, up, region_killed = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
per = {}
for s in sessions:
    per.setdefault(s["region"], {}).setdefault(s["reason"], 0)
    per[s["region"]][s["reason"]] += 1
print("sessions per region (PostgreSQL): " + "; ".join(
    f"{r}: {sum(n.values())} ({', '.join(f'{k} {v}' for k, v in sorted(n.items()))})" for r, n in sorted(per.items())))
def p(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(q * len(values) + 0.5)) - 1))] if values else None
def fmt(values):
    if not values:
        return "none"
    return f"{len(values)} players, p50 {p(values, 0.5):.0f} ms, p99 {p(values, 0.99):.0f} ms"
rows = summary.get("time_to_play", [])
phases = [("before", lambda t: True)] if not killed else [
    ("before", lambda t: t < killed),
    ("during", lambda t: killed <= t < up),
    ("after", lambda t: t >= up),
]
print("time to play (join → running) by when the player joined" + (f", {region_killed} killed {(killed - started) / 1000:.0f} s in, up again at {(up - started) / 1000:.0f} s" if killed else "") + ":")
for region in sorted({r for _, r, _ in rows}):
    cells = [f"{name}: {fmt([ms for t, r, ms in rows if r == region and when(t)])}" for name, when in phases]
    print(f"  {region}: " + "; ".join(cells))
cells = [f"{name}: {fmt([ms for t, _, ms in rows if when(t)])}" for name, when in phases]
print("  all: " + "; ".join(cells))
# Sessions of the killed region ended failed (their players requeued); every other one ended
# as a match does. Nothing is left open.
open_rows = sum(1 for s in sessions if s["status"] != "ended")
bad = [s for s in sessions if s["reason"] not in ("completed", "failed")]
failed_elsewhere = [s for s in sessions if s["reason"] == "failed" and s["region"] != region_killed]
if open_rows or bad or failed_elsewhere:
    print(f"FAILED: {open_rows} sessions not ended, {len(bad)} ended otherwise than completed or failed, {len(failed_elsewhere)} failed outside {region_killed}")
    sys.exit(1)
PY
for region in "${MP_REGIONS[@]}"; do
  left=$(curl -fsS "http://127.0.0.1:${MP_SIM_PORT[$region]}/sim/pods" | python3 -c 'import json,sys; print(sum(1 for p in json.load(sys.stdin) if p["deleted_ms"] is None and p["session"]))')
  [ "$left" = 0 ] || { echo "region $region: $left session Pods still present"; status=1; }
  mp_sim_refused "http://127.0.0.1:${MP_SIM_PORT[$region]}" || status=1
done
if [ "$status" -eq 0 ]; then echo "demo-regions passed: report at $out/summary.json"; else echo "demo-regions FAILED"; fi
exit "$status"
