#!/usr/bin/env bash
# `make demo`: build (the shared build, mp_build), start the whole stack on this machine, run a swarm of
# CLIENTS (60) players with MATCH_DURATION (5 s) matches through the proxy, print the summary,
# and stop everything it started, also on failure or ctrl-c. SCENARIO=ranked runs the ranked
# scenario instead: the queues of examples/queues.yaml (max wait 30 s), CLIENTS (360) ranked
# tickets and parties joined by the studio's service, 2 teams of 3; it fails if more than 10%
# of them time out in their queue (the few the windows cannot place at the end are not
# failures). SCENARIO=churn runs CLIENTS (200) players in the casual queue, which backfills:
# during MATCH_DURATION (60 s) matches players leave (CHURN_PERCENT_PER_MINUTE, 10), half come
# back, and backfill places new players into the running matches; the summary gives the
# backfill time. SCENARIO=rollout runs CLIENTS (240) players, SPAWN_RATE (24) a second, on the
# built-in server's versions old and new: halfway, the weights go to new and old drains; the
# summary gives the drain's time to the old version's last session and the sessions lost.
# SERVER=bzflag or SERVER=sauerbraten runs
# a game server nobody here wrote instead (the profiles of examples/servers.yaml): CLIENTS (16)
# players join its queue, reach it through the proxy with their tickets (TCP, or UDP for
# Sauerbraten) and complete the game's own handshake; then the sessions' ends from the history.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stack.sh
. scripts/stack.sh

# The demo's numbers, checked before anything is installed, built or started.
for name in CLIENTS SESSION_SIZE; do
  value=${!name:-}
  [ -z "$value" ] || [[ $value =~ ^[1-9][0-9]*$ ]] || mp_die "$name must be a whole number above 0, got '$value'."
done
for name in MATCH_DURATION SPAWN_RATE; do
  value=${!name:-}
  [ -z "$value" ] || [[ $value =~ ^[0-9]+(\.[0-9]+)?$ ]] || mp_die "$name must be a number of seconds or players per second (0 or more), got '$value'."
done
command -v cargo >/dev/null 2>&1 || mp_die "make demo needs the Rust toolchain (cargo): install it from rustup.rs and run this again."
command -v curl >/dev/null 2>&1 || mp_apt_install curl || mp_die "make demo needs curl: install it with 'sudo apt-get install -y curl' and run this again."
mp_need_redis
mp_need_postgres
echo "== building =="
mp_build

out=.run/demo
# One run's files only: an interrupted run's logs never sit beside an earlier run's summary.
rm -rf "$out"
mkdir -p "$out"
server=${SERVER:-}
if [ -n "$server" ]; then
  [ -z "${SCENARIO:-}" ] || mp_die "give SERVER or SCENARIO, not both."
  case $server in
    bzflag) program=/usr/games/bzfs package=bzflag-server ;;
    sauerbraten) program=/usr/games/cube2-server package=cube2-server ;;
    *) mp_die "SERVER must be bzflag or sauerbraten (the profiles of examples/servers.yaml), got '$server'." ;;
  esac
  [ -x "$program" ] || mp_apt_install "$package" \
    || mp_die "SERVER=$server needs $package: install it with 'sudo apt-get install -y $package' and run this again."
  MATCHMAKING_CONFIG="$(pwd)/examples/servers.yaml"
  export MATCHMAKING_CONFIG
fi
scenario=${SCENARIO:-fifo}
sizes=(--session-size "${SESSION_SIZE:-12}")
clients=${CLIENTS:-60}
match_duration=${MATCH_DURATION:-5}
spawn_rate=${SPAWN_RATE:-0}
case $scenario in
  fifo) ;;
  ranked)
    # The few tickets a run leaves that cannot make a session end timed_out after 30 s, not 120.
    sed 's/max_wait_seconds: 120/max_wait_seconds: 30/' examples/queues.yaml >"$out/queues.yaml"
    MATCHMAKING_CONFIG="$(pwd)/$out/queues.yaml"
    export MATCHMAKING_CONFIG
    # Enough players that the skill and latency windows find sessions for nearly all of them
    # within seconds (with 60, two in five waited out the 30 s).
    clients=${CLIENTS:-360}
    sizes=(--session-size 6 --min-session-size 6 --max-timed-out-percent 10) ;;
  churn)
    # The casual queue of examples/queues.yaml backfills: players leave running matches at
    # CHURN_PERCENT_PER_MINUTE (10), half come back within its 5 s leave grace, and each who
    # leaves for good is replaced by a new player, whom backfill places into the running match.
    MATCHMAKING_CONFIG="$(pwd)/examples/queues.yaml"
    export MATCHMAKING_CONFIG
    clients=${CLIENTS:-200}
    match_duration=${MATCH_DURATION:-60}
    sizes=(--session-size 8 --min-session-size 2 --leave-grace-seconds 5
      --churn-percent-per-minute "${CHURN_PERCENT_PER_MINUTE:-10}") ;;
  rollout)
    # The built-in game server in two versions, old and new: once half the players have
    # started, an operator (the swarm, with the admin token) moves the weights to the new one
    # and drains the old; its matches play to their end. Each version keeps a warm pool of its
    # own (WARM_POOL_MIN, default 4): the drained one's stops.
    cat >"$out/queues.yaml" <<'YAML'
servers:
  game-server:
    versions:
      - {name: old, weight: 100}
      - {name: new, weight: 0}
queues:
  - {name: default, session_size: 12, min_session_size: 2, flush_wait_seconds: 15}
  - {name: casual, session_size: 12, min_session_size: 2, flush_wait_seconds: 15}
YAML
    MATCHMAKING_CONFIG="$(pwd)/$out/queues.yaml"
    WARM_POOL_MIN=${WARM_POOL_MIN:-4}
    export MATCHMAKING_CONFIG WARM_POOL_MIN
    clients=${CLIENTS:-240}
    match_duration=${MATCH_DURATION:-20}
    spawn_rate=${SPAWN_RATE:-24}
    sizes=(--session-size 12) ;;
  *) mp_die "SCENARIO must be fifo, ranked, churn or rollout, got '$scenario'." ;;
esac
started=$(date +%s.%N)
echo "== starting Redis, PostgreSQL, backend (RUNTIME=local) and proxy =="
RUST_LOG=${RUST_LOG:-info} mp_start_stack ".run/demo-stack-$$"
trap 'mp_stop_stack; cp "$MP_STACK_DIR"/*.log "$out"/ 2>/dev/null; [ "${MP_KEEP_RUN_DIR:-0}" = 1 ] || rm -rf "$MP_STACK_DIR"' EXIT
trap 'exit 130' INT TERM
echo "proxy $MP_PROXY_URL, backend $MP_BACKEND_URL (logs: $out/backend.log, $out/proxy.log)"
# A pool is kept ahead of demand: let it fill before the players come, as in production.
mp_wait_warm "$MP_BACKEND_URL"

if [ -n "$server" ]; then
  echo "== ${CLIENTS:-16} players of $server's own server (profile $server), through the proxy =="
  status=0
  env SERVICE_TOKEN="$MP_SERVICE_TOKEN" "$MP_BIN/loadgen" hosted \
    --target-url "$MP_PROXY_URL" --queue "$server" --game "$server" --clients "${CLIENTS:-16}" || status=$?
  # Each session ends as its profile says (bzfs exits after its game; Sauerbraten's server is
  # stopped once empty): wait for the history to have them all ended.
  for _ in $(seq 1 600); do
    [ "$("$MP_PG_BIN/psql" "$MP_DATABASE_URL" -tAc "SELECT count(*) FROM matches WHERE queue = '$server' AND status <> 'ended'")" = 0 ] && break
    sleep 0.1
  done
  echo "PostgreSQL history: $("$MP_PG_BIN/psql" "$MP_DATABASE_URL" -tAc "SELECT count(*) || ' sessions of $server, ' || count(*) FILTER (WHERE status = 'ended') || ' ended (' || coalesce(string_agg(DISTINCT end_reason, ', '), '') || '), ' || (SELECT count(*) FROM match_players p JOIN matches m USING (session_id) WHERE m.queue = '$server' AND p.joined_at IS NOT NULL) || ' players seen connecting' FROM matches WHERE queue = '$server'")"
  if [ "$status" -eq 0 ]; then echo "demo passed: $server hosted by matchplane"; else echo "demo FAILED (loadgen hosted exit $status)"; fi
  exit "$status"
fi

echo "== swarm: $clients clients, $match_duration s matches, scenario $scenario =="
status=0
mp_run_swarm env PLAYER_TOKEN_SECRET="$MP_PLAYER_TOKEN_SECRET" SERVICE_TOKEN="$MP_SERVICE_TOKEN" ADMIN_TOKEN="$MP_ADMIN_TOKEN" \
  "$MP_BIN/loadgen" swarm --scenario "$scenario" \
  --target-url "$MP_PROXY_URL" --clients "$clients" \
  --spawn-rate "$spawn_rate" --match-duration "$match_duration" \
  "${sizes[@]}" --json "$out/summary.json" --chart "$out/latency.svg" || status=$?
# History is written asynchronously from the outbox: give it a moment, then read PostgreSQL.
for _ in $(seq 1 50); do
  [ "$(curl -fsS "$MP_BACKEND_URL/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["history_backlog"])')" = 0 ] && break
  sleep 0.1
done
echo "PostgreSQL history: $("$MP_PG_BIN/psql" "$MP_DATABASE_URL" -tAc "SELECT count(*) || ' sessions, ' || count(*) FILTER (WHERE status = 'ended') || ' ended (' || coalesce(string_agg(DISTINCT end_reason, ', '), '') || ')' FROM matches")"
peak() { awk '/^VmHWM/ {printf "%.1f MiB", $2 / 1024}' "/proc/$1/status" 2>/dev/null; }
echo "peak RSS: backend $(peak "$MP_BACKEND_PID"), proxy $(peak "$MP_PROXY_PID")"
elapsed=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
echo "demo wall time after the build: ${elapsed} s"
if [ "$status" -eq 0 ]; then echo "demo passed: chart at $out/latency.svg, report at $out/summary.json"; else echo "demo FAILED (swarm exit $status)"; fi
exit "$status"
