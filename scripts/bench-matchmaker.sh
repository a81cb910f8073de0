#!/usr/bin/env bash
# `make bench-matchmaker`: one release backend with RUNTIME=none on ephemeral Redis and
# PostgreSQL, with the queues of examples/queues.yaml, driven over HTTP by `loadgen
# bench-matchmaker` once per scenario (SCENARIOS, default "fifo ranked": plain joins to the
# default queue, then ranked tickets with parties), side by side in one run; after each, the
# Redis-only ceiling of the same joins (the backend's own join code straight against Redis, at
# the same concurrency, no HTTP) and the ratio; then the ratio of the two scenarios'
# throughputs and Redis round trips from Redis's own command counters.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

PLAYERS=${PLAYERS:-60000}
CONCURRENCY=${CONCURRENCY:-64}
SCENARIOS=${SCENARIOS:-fifo ranked}
mp_build_release
run_dir=${MP_RUN_DIR:-.run}/bench-$$
mp_start_services "$run_dir"
port=$(mp_free_ports 1)
redis_port=${MP_REDIS_URL##*:}
# Joins carry player tokens (PLAYER_AUTH=jwt, the default), minted before the clock starts.
player_secret=bench-player-secret-$RANDOM$RANDOM$RANDOM$RANDOM$RANDOM$RANDOM
export PLAYER_TOKEN_SECRET=$player_secret
# Ranked tickets (skill, parties) are joined by the studio's service.
SERVICE_TOKEN=bench-service-token-$RANDOM$RANDOM$RANDOM$RANDOM$RANDOM$RANDOM$RANDOM
export SERVICE_TOKEN
# The example queues, with a 1 s flush in the default queue so its leftovers place at once.
sed 's/flush_wait_seconds: 15/flush_wait_seconds: 1/' examples/queues.yaml >"$run_dir/queues.yaml"

RUST_LOG=warn RUNTIME=none BIND=127.0.0.1:$port REDIS_URL=$MP_REDIS_URL DATABASE_URL=$MP_DATABASE_URL \
  TICKET_SECRET=bench-secret-$RANDOM$RANDOM-0123456789abcdef0123 MATCHMAKING_CONFIG=$run_dir/queues.yaml INSTANCE_ID=bench \
  "${CARGO_TARGET_DIR:-target}/release/backend" &
backend_pid=$!
trap 'kill $backend_pid 2>/dev/null; wait $backend_pid 2>/dev/null || true; mp_stop_services' EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.1
done

calls() { redis-cli -p "$redis_port" info commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_/ {n += $3} END {print n}'; }
redis-cli -p "$redis_port" config resetstat >/dev/null
before=$(calls)
for scenario in $SCENARIOS; do
  "${CARGO_TARGET_DIR:-target}/release/loadgen" bench-matchmaker --target-url "http://127.0.0.1:$port" --players "$PLAYERS" \
    --concurrency "$CONCURRENCY" --id-prefix "bench-$$-$scenario" --scenario "$scenario" \
    --redis-url "$MP_REDIS_URL" --redis-ceiling --matchmaking-config "$run_dir/queues.yaml" \
    --json "$run_dir/bench-matchmaker-$scenario.json"
done
if [[ " $SCENARIOS " == *" fifo "* && " $SCENARIOS " == *" ranked "* ]]; then
  python3 - "$run_dir/bench-matchmaker-fifo.json" "$run_dir/bench-matchmaker-ranked.json" <<'PY'
import json, sys
fifo, ranked = (json.load(open(p)) for p in sys.argv[1:])
print(f"ranked / fifo, same run: players placed/s x{ranked['placed_per_second'] / fifo['placed_per_second']:.2f}, "
      f"tickets joined/s x{ranked['tickets_per_second'] / fifo['tickets_per_second']:.2f}; "
      f"p99 time to match {fifo['formed']['time_to_match_ms']['p99_ms']:.0f} ms (fifo) vs "
      f"{ranked['formed']['time_to_match_ms']['p99_ms']:.0f} ms (ranked)")
PY
fi
sleep 2
after=$(calls)
metrics=$(curl -fsS "http://127.0.0.1:$port/metrics")
sessions=$(echo "$metrics" | awk '/^mp_sessions_formed_total\{/ {n += $2} END {print n}')
echo "redis-cli info commandstats (every command, incl. health, heartbeat, history):"
redis-cli -p "$redis_port" info commandstats | tr -d '\r' | grep '^cmdstat_' | sed 's/,usec_per_call.*//; s/^/  /'
joins=$(python3 -c 'import json, sys; print(sum(json.load(open(p))["tickets"] for p in sys.argv[1:]))' "$run_dir"/bench-matchmaker-*.json)
ceiling=$(python3 -c 'import json, sys; print(sum((json.load(open(p)).get("redis_ceiling") or {}).get("tickets", 0) for p in sys.argv[1:]))' "$run_dir"/bench-matchmaker-*.json)
python3 - "$before" "$after" "$joins" "$sessions" "$redis_port" "$ceiling" <<'PY'
import subprocess, sys
before, after, players, sessions, port, ceiling = (int(x) for x in sys.argv[1:])
stats = subprocess.run(["redis-cli", "-p", str(port), "info", "commandstats"], capture_output=True, text=True).stdout
calls = {line.split(":")[0][8:]: int(line.split("calls=")[1].split(",")[0]) for line in stats.splitlines() if line.startswith("cmdstat_")}
evals = calls.get("evalsha", 0) + calls.get("eval", 0)
# Every join is one script call; in a dry run every session is ended by one script call; the
# rest of the script calls are the matcher's batched form calls (and, for rule queues, its
# lease and commit calls). The ceiling's joins are one script call each too.
forms = evals - players - ceiling - sessions
print(f"round trips: 1 script call per join ({players}); per session formed: {forms / sessions:.2f} form calls "
      f"(batched) + 1 end call ({sessions} sessions); commands executed inside Redis in all: {after - before}")
PY
