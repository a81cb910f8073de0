#!/usr/bin/env bash
# `make chaos`: the whole system under random faults for CHAOS_MINUTES (10; CI runs 2), every
# invariant checked while it runs and at the end. Three regions (kube-sim clusters, each with
# its proxy and warm Pods), two backend replicas, Redis (a primary and a replica on append-only
# files, three Sentinels that every part follows), PostgreSQL;
# two swarms play all along: ranked tickets (skills, latency maps, parties of two) and
# first-come players. Every CHAOS_EVERY_SECONDS (8, at random 0.5 to 1.5 times it) a fault
# injector strikes one of:
#   redis_kill      the Redis primary SIGKILLed and restarted at once on its append-only file
#   sentinel_failover  the Redis primary SIGKILLed and left down until the Sentinels promote
#                   the replica, then started again (they make it the new primary's replica)
#   postgres_stop   PostgreSQL stopped for 10 to 30 s
#   replica_kill    a backend replica SIGKILLed and replaced under a new INSTANCE_ID
#   proxy_restart   a region's proxy stopped and started again
#   pod_delete      a session's Pod deleted          pod_evict   a session's Pod evicted
#   server_kill     a session's game server killed (its container)
#   api_errors      an API error storm (30 answers of 500, 429 or 503)
#   watch_cut       every Pod watch of a cluster cut
#   region_kill     a whole region (cluster and proxy) killed, back empty 10 to 20 s later
# Checked all along: no player in two live sessions. At the end: every player finished a match
# (a failed one followed by the next) or timed out in its queue; every session the players saw
# is one PostgreSQL row, ended, with its players; no session live, no session Pod, no game
# server process left. Prints, per fault kind, how often it struck and the p50/p99 time until
# players were matching again (a session formed after the fault was repaired), and writes
# .run/chaos/chaos.json. Exits non-zero on any broken invariant.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stack.sh
. scripts/stack.sh

minutes=${CHAOS_MINUTES:-10}
every=${CHAOS_EVERY_SECONDS:-8}
for name in minutes every; do
  [[ ${!name} =~ ^[1-9][0-9]*$ ]] || mp_die "CHAOS_MINUTES and CHAOS_EVERY_SECONDS must be whole numbers above 0, got '${!name}'."
done
command -v cargo >/dev/null 2>&1 || mp_die "make chaos needs the Rust toolchain (cargo): install it from rustup.rs and run this again."
command -v curl >/dev/null 2>&1 || mp_apt_install curl || mp_die "make chaos needs curl: install it with 'sudo apt-get install -y curl' and run this again."
mp_need_redis
mp_need_postgres
echo "== building =="
mp_build
out=.run/chaos
rm -rf "$out"
mkdir -p "$out"
run=$(mkdir -p .run && cd .run && pwd)/chaos-$$
mkdir -p "$run"
# shellcheck source=scripts/regions-stack.sh
. scripts/regions-stack.sh
swarms=()
checker=''
# shellcheck disable=SC2317  # run by the EXIT trap
stop_all() {
  local pid
  for pid in "${swarms[@]}" $checker; do kill -TERM "$pid" 2>/dev/null || true; done
  mp_regions_stop
  mp_stop_services
  cp "$run"/*.log "$run"/*.tsv "$out"/ 2>/dev/null || true
  [ "${MP_KEEP_RUN_DIR:-0}" = 1 ] || rm -rf "$run"
}
echo "== starting Redis (primary, replica, three Sentinels), PostgreSQL, three regions and two backend replicas =="
# Every Redis start, the restarts too, on the append-only file.
export MP_REDIS_AOF=1 MP_REDIS_SENTINELS=1
mp_start_services "$run/services"
trap stop_all EXIT
trap 'exit 130' INT TERM
sed 's/max_wait_seconds: 120/max_wait_seconds: 60/' examples/queues.yaml >"$run/queues.yaml"
mp_regions_start "$run" "$run/queues.yaml" 2
admin=$MP_RS_ADMIN
api="http://127.0.0.1:${MP_REGION_PROXY_PORT[eu]}"
now_ms() { date +%s%3N; }
pick() { local items=("$@"); echo "${items[RANDOM % ${#items[@]}]}"; }

# All along: no player in two live sessions, as any replica that answers sees them.
python3 - "$admin" "$run/violations.log" "${MP_BACKEND_PORTS[@]}" >"$run/checker.log" 2>&1 <<'PY' &
import json, sys, time, urllib.request
admin, log, ports = sys.argv[1], sys.argv[2], sys.argv[3:]
checks = 0
while True:
    for port in ports:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/sessions/active?limit=2000",
                                         headers={"authorization": f"Bearer {admin}"})
            sessions = json.load(urllib.request.urlopen(req, timeout=2))["sessions"]
        except Exception:
            continue
        seen = {}
        for s in sessions:
            for p in s["players"]:
                if p in seen and seen[p] != s["session_id"]:
                    with open(log, "a") as f:
                        f.write(f"{time.time():.3f} {p} in live sessions {seen[p]} and {s['session_id']}\n")
                seen[p] = s["session_id"]
        checks += 1
        print(f"checks {checks}", flush=True)
        break
    time.sleep(1)
PY
checker=$!

duration=$((minutes * 60))
echo "== ${minutes} min of two swarms (ranked and first-come) under a fault every ~${every} s =="
# Players keep arriving for 60 s after the last fault may strike, so that its recovery (a
# session formed after its repair) can be seen.
common=(--match-duration 10 --spawn-rate 3 --clients $(((duration + 60) * 3)) --rejoin-after-failure --progress none)
env PLAYER_TOKEN_SECRET="$MP_RS_PLAYER" SERVICE_TOKEN="$MP_RS_SERVICE" "$MP_BIN/loadgen" swarm --scenario ranked \
  --target-url "$api" --probe-regions "$(mp_probe_regions)" --id-prefix chaos-ranked "${common[@]}" --session-size 6 --min-session-size 6 \
  --max-timed-out-percent 10 --json "$out/ranked.json" >"$run/swarm-ranked.log" 2>&1 &
swarms+=($!)
env PLAYER_TOKEN_SECRET="$MP_RS_PLAYER" "$MP_BIN/loadgen" swarm --scenario fifo \
  --target-url "$api" --id-prefix chaos-fifo "${common[@]}" --session-size 12 --min-session-size 2 \
  --json "$out/fifo.json" >"$run/swarm-fifo.log" 2>&1 &
swarms+=($!)

printf 'kind\tinjected_ms\trepaired_ms\trecovered_ms\tdetail\n' >"$run/faults.tsv"
# A session's Pod in REGION, if any.
session_pod() {
  curl -fsS "http://127.0.0.1:${MP_SIM_PORT[$1]}/sim/pods" 2>/dev/null | python3 -c '
import json, random, sys
pods = [p["name"] for p in json.load(sys.stdin) if p["session"] and p["deleted_ms"] is None and p["phase"] == "Running"]
print(random.choice(pods) if pods else "")'
}
# Sessions formed since MS, as PostgreSQL's history says (0 while it is down).
formed_since() {
  "$MP_PG_BIN/psql" "$MP_DATABASE_URL" -tAc "SELECT count(*) FROM matches WHERE created_at >= to_timestamp($1 / 1000.0)" 2>/dev/null || echo 0
}
inject() {
  local kind=$1 injected repaired detail='' region pod i
  # A Redis fault strikes a healthy pair: its replica online and caught up. (Failing over to
  # a replica still resyncing after the last fault loses the writes since: two faults at
  # once, which Redis's replication does not survive; see docs/chaos.md.)
  case $kind in
    redis_kill | sentinel_failover) mp_redis_in_sync 60 || echo "$(date +%T) the Redis replica was not in sync after 60 s; $kind strikes anyway" ;;
  esac
  injected=$(now_ms)
  case $kind in
    redis_kill) mp_restart_redis ;;
    sentinel_failover)
      local old new
      old=$(mp_redis_primary_port)
      mp_redis_kill "$old"
      new=$old
      for _ in $(seq 1 300); do
        new=$(mp_redis_primary_port)
        [ "$new" = "$old" ] || break
        sleep 0.1
      done
      if [ "$new" = "$old" ]; then detail="primary :$old, no failover within 30 s"; else detail="primary :$old to :$new"; fi
      mp_redis_start "$old" ;;
    postgres_stop)
      mp_pg_stop
      sleep $((10 + RANDOM % 21))
      mp_pg_start || { sleep 1; mp_pg_start; } ;;
    replica_kill)
      i=$((RANDOM % ${#MP_BACKEND_PIDS[@]}))
      kill -KILL "${MP_BACKEND_PIDS[i]}" 2>/dev/null || true
      wait "${MP_BACKEND_PIDS[i]}" 2>/dev/null || true
      detail="replica-$((i + 1)) replaced as replica-$((i + 1))-$injected"
      mp_backend_start "$i" "replica-$((i + 1))-$injected" ;;
    proxy_restart)
      region=$(pick "${MP_REGIONS[@]}")
      detail=$region
      kill -TERM "${MP_REGION_PROXY_PID[$region]}" 2>/dev/null || true
      wait "${MP_REGION_PROXY_PID[$region]}" 2>/dev/null || true
      mp_proxy_start "$region" ;;
    pod_delete | pod_evict | server_kill)
      # A running session's Pod in some region (waiting up to 10 s for one).
      pod=''
      for _ in $(seq 1 10); do
        for region in $(printf '%s\n' "${MP_REGIONS[@]}" | shuf); do
          pod=$(session_pod "$region")
          [ -z "$pod" ] || break 2
        done
        sleep 1
      done
      [ -n "$pod" ] || { echo "$(date +%T) $kind: no running session's Pod in 10 s; skipped"; return 0; }
      detail="$region $pod"
      local action=delete
      [ "$kind" != server_kill ] || action="kill"
      [ "$kind" != pod_evict ] || action=evict
      curl -fsS -X POST "http://127.0.0.1:${MP_SIM_PORT[$region]}/sim/pods/games/$pod/$action" >/dev/null || true ;;
    api_errors)
      region=$(pick "${MP_REGIONS[@]}")
      local code
      code=$(pick 500 429 503)
      detail="$region 30x$code"
      curl -fsS -X POST -H 'content-type: application/json' -d "{\"code\": $code, \"count\": 30}" \
        "http://127.0.0.1:${MP_SIM_PORT[$region]}/sim/faults" >/dev/null || true ;;
    watch_cut)
      region=$(pick "${MP_REGIONS[@]}")
      detail=$region
      curl -fsS -X POST "http://127.0.0.1:${MP_SIM_PORT[$region]}/sim/watches/cut" >/dev/null || true ;;
    region_kill)
      # Not eu: the swarms reach the API through its proxy.
      region=$(pick us asia)
      detail=$region
      kill -KILL "${MP_REGION_PROXY_PID[$region]}" 2>/dev/null || true
      kill -TERM "${MP_SIM_PID[$region]}" 2>/dev/null || true
      wait "${MP_SIM_PID[$region]}" "${MP_REGION_PROXY_PID[$region]}" 2>/dev/null || true
      sleep $((10 + RANDOM % 11))
      mp_cluster_start "$region"
      mp_proxy_start "$region" ;;
  esac
  repaired=$(now_ms)
  # Players matching again: a session formed after the repair (given 90 s).
  local recovered=''
  for _ in $(seq 1 900); do
    if [ "$(formed_since "$repaired")" -gt 0 ]; then recovered=$(now_ms); break; fi
    sleep 0.1
  done
  printf '%s\t%s\t%s\t%s\t%s\n' "$kind" "$injected" "$repaired" "${recovered:-}" "$detail" >>"$run/faults.tsv"
  echo "$(date +%T) $kind${detail:+ ($detail)}: repaired after $(((repaired - injected) / 1000)) s, players matching again after $([ -n "$recovered" ] && echo "$(((recovered - injected) / 1000)) s" || echo "never (90 s)")"
}

kinds=(redis_kill sentinel_failover region_kill postgres_stop replica_kill proxy_restart pod_delete pod_evict server_kill api_errors watch_cut)
started=$(date +%s)
# The first fault of each kind in turn, so that even a short run sees every kind once (past
# its minutes if it must: the longest outages come first, and players keep arriving for 60 s
# more); then at random.
n=0
while [ $(($(date +%s) - started)) -lt "$duration" ] || [ "$n" -lt "${#kinds[@]}" ]; do
  sleep "$(python3 -c "import random; print(round(random.uniform(0.5, 1.5) * $every, 1))")"
  [ $(($(date +%s) - started)) -lt "$duration" ] || [ "$n" -lt "${#kinds[@]}" ] || break
  if [ "$n" -lt "${#kinds[@]}" ]; then kind=${kinds[n]}; else kind=$(pick "${kinds[@]}"); fi
  n=$((n + 1))
  inject "$kind"
done
echo "== faults over; the swarms finish =="
status=0
for pid in "${swarms[@]}"; do wait "$pid" || status=1; done
swarms=()
tail -n 25 "$run/swarm-ranked.log"
tail -n 20 "$run/swarm-fifo.log"
# Settle: every session over (the last matches end), history written.
for _ in $(seq 1 600); do
  live=$(curl -fsS -H "authorization: Bearer $admin" "http://127.0.0.1:${MP_BACKEND_PORTS[0]}/sessions/active?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["matching"])' || echo 1)
  backlog=$(curl -fsS "http://127.0.0.1:${MP_BACKEND_PORTS[0]}/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["history_backlog"])' || echo 1)
  [ "$live" = 0 ] && [ "$backlog" = 0 ] && break
  sleep 0.2
done
kill -TERM "$checker" 2>/dev/null || true
"$MP_PG_BIN/psql" "$MP_DATABASE_URL" -tAc "SELECT coalesce(json_agg(json_build_object('session', m.session_id, 'status', m.status, 'reason', m.end_reason, 'region', m.region, 'players', (SELECT coalesce(json_agg(p.player_id), '[]') FROM match_players p WHERE p.session_id = m.session_id))), '[]') FROM matches m" >"$run/sessions.json"
# Every session's Pod goes once its session is over (kept 2 s; a reaper's resync at most).
for _ in $(seq 1 300); do
  pods_left=0
  for region in "${MP_REGIONS[@]}"; do
    n=$(curl -fsS "http://127.0.0.1:${MP_SIM_PORT[$region]}/sim/pods" | python3 -c 'import json,sys; print(sum(1 for p in json.load(sys.stdin) if p["deleted_ms"] is None and p["session"]))')
    pods_left=$((pods_left + n))
  done
  [ "$pods_left" = 0 ] && break
  sleep 0.2
done
python3 - "$run/faults.tsv" "$run/sessions.json" "$out/ranked.json" "$out/fifo.json" "$run/violations.log" "$live" "$pods_left" "$minutes" "$out/chaos.json" <<'PY' || status=1
import json, os, sys
faults_tsv, sessions_json, ranked, fifo, violations, live, pods_left, minutes, out = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(faults_tsv)][1:]
sessions = {s["session"]: s for s in json.load(open(sessions_json))}
reports = {name: json.load(open(path)) for name, path in (("ranked", ranked), ("fifo", fifo)) if os.path.exists(path)}
problems = []
def q(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(p * len(values) + 0.5)) - 1))] if values else None
table = {}
for kind, injected, repaired, recovered, _ in rows:
    entry = table.setdefault(kind, {"struck": 0, "recover_ms": [], "never": 0})
    entry["struck"] += 1
    if recovered:
        entry["recover_ms"].append(int(recovered) - int(injected))
    else:
        entry["never"] += 1
for kind, injected, repaired, recovered, _ in rows:
    table[kind].setdefault("outage_ms", []).append(int(repaired) - int(injected))
fmt = lambda v: f"{v / 1000:.1f} s" if v is not None else "-"
print("time to recover: from the fault striking until a session formed after it was repaired (the outage itself included)")
print(f"{'fault':<18} {'struck':>6} {'outage p50':>11} {'recover p50':>12} {'p99':>8}  never")
for kind, e in sorted(table.items()):
    p50, p99 = q(e["recover_ms"], 0.5), q(e["recover_ms"], 0.99)
    print(f"{kind:<18} {e['struck']:>6} {fmt(q(e['outage_ms'], 0.5)):>11} {fmt(p50):>12} {fmt(p99):>8}  {e['never']}")
    if e["never"]:
        problems.append(f"{kind}: players were not matching again within 90 s after {e['never']} of its strikes")
# Invariants.
if os.path.exists(violations) and os.path.getsize(violations):
    problems.append("a player was in two live sessions: " + open(violations).read().splitlines()[0])
for name in ("ranked", "fifo"):
    r = reports.get(name)
    if r is None:
        problems.append(f"the {name} swarm wrote no report")
        continue
    if r["failed"]:
        problems.append(f"{name}: {r['failed']} players neither finished a match nor timed out: {r['failures'][:3]}")
    if not r["invariants"]["ok"]:
        problems.append(f"{name}: the swarm's invariants broke: {r['invariants']}")
    for sid, roster in r.get("rosters", {}).items():
        s = sessions.get(sid)
        if s is None:
            problems.append(f"{name}: session {sid} has no PostgreSQL row")
        elif s["status"] != "ended":
            problems.append(f"{name}: session {sid}'s row is {s['status']}, not ended")
        elif sorted(s["players"]) != sorted(roster):
            problems.append(f"{name}: session {sid}'s row names {sorted(s['players'])}, its players saw {sorted(roster)}")
if int(live):
    problems.append(f"{live} sessions still live after the run")
if int(pods_left):
    problems.append(f"{pods_left} session Pods still present after the run")
reasons = {}
for s in sessions.values():
    reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
played = {name: f"{r['ok']} played, {r['timed_out']} timed out, {r['failed']} failed, {r.get('requeues', 0)} requeued, {r.get('rejoins', 0)} re-joined, {r.get('reconnects', 0)} reconnected" for name, r in reports.items()}
print(f"players: " + "; ".join(f"{k}: {v}" for k, v in played.items()))
print(f"sessions in PostgreSQL: {len(sessions)} (" + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: str(kv[0]))) + ")")
json.dump({"minutes": int(minutes), "faults": {k: {"struck": e["struck"], "outage_p50_ms": q(e["outage_ms"], 0.5), "p50_ms": q(e["recover_ms"], 0.5), "p99_ms": q(e["recover_ms"], 0.99), "never": e["never"]} for k, e in table.items()},
           "players": played, "end_reasons": {str(k): v for k, v in reasons.items()}, "problems": problems}, open(out, "w"), indent=1)
for p in problems:
    print("BROKEN: " + p)
sys.exit(1 if problems else 0)
PY
mp_regions_stop
if pgrep -f "$MP_BIN/game-server" >/dev/null; then
  echo "BROKEN: game-server processes still running after everything stopped: $(pgrep -f "$MP_BIN/game-server" | wc -l)"
  status=1
fi
if [ "$status" -eq 0 ]; then echo "chaos passed: ${minutes} min, every invariant held (report: $out/chaos.json)"; else echo "chaos FAILED"; fi
exit "$status"
