#!/usr/bin/env bash
# `make bench-matchmaker`: one release backend with RUNTIME=none on ephemeral Redis and
# PostgreSQL, driven over HTTP by `loadgen bench-matchmaker`; then Redis round trips per join
# and per session formed, from Redis's own command counters.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

PLAYERS=${PLAYERS:-60000}
CONCURRENCY=${CONCURRENCY:-64}
cargo build --release --locked -p backend -p loadgen
run_dir=${MP_RUN_DIR:-.run}/bench-$$
mp_start_services "$run_dir"
port=$(mp_free_port)
redis_port=${MP_REDIS_URL##*:}
# Joins carry player tokens (PLAYER_AUTH=jwt, the default), minted before the clock starts.
player_secret=bench-player-secret-$RANDOM$RANDOM$RANDOM$RANDOM$RANDOM$RANDOM
export PLAYER_TOKEN_SECRET=$player_secret

RUST_LOG=warn RUNTIME=none BIND=127.0.0.1:$port REDIS_URL=$MP_REDIS_URL DATABASE_URL=$MP_DATABASE_URL \
  TICKET_SECRET=bench-secret-$RANDOM$RANDOM FLUSH_WAIT_SECONDS=1 INSTANCE_ID=bench \
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
"${CARGO_TARGET_DIR:-target}/release/loadgen" bench-matchmaker --target-url "http://127.0.0.1:$port" --players "$PLAYERS" \
  --concurrency "$CONCURRENCY" --id-prefix "bench-$$" --json "$run_dir/bench-matchmaker.json"
sleep 2
after=$(calls)
metrics=$(curl -fsS "http://127.0.0.1:$port/metrics")
sessions=$(echo "$metrics" | awk '/^mp_sessions_formed_total\{/ {n += $2} END {print n}')
echo "redis-cli info commandstats (every command, incl. health, heartbeat, history):"
redis-cli -p "$redis_port" info commandstats | tr -d '\r' | grep '^cmdstat_' | sed 's/,usec_per_call.*//; s/^/  /'
python3 - "$before" "$after" "$PLAYERS" "$sessions" "$redis_port" <<'PY'
import subprocess, sys
before, after, players, sessions, port = (int(x) for x in sys.argv[1:])
stats = subprocess.run(["redis-cli", "-p", str(port), "info", "commandstats"], capture_output=True, text=True).stdout
calls = {line.split(":")[0][8:]: int(line.split("calls=")[1].split(",")[0]) for line in stats.splitlines() if line.startswith("cmdstat_")}
evals = calls.get("evalsha", 0) + calls.get("eval", 0)
# Every join is one script call; in a dry run every session is ended by one script call; the
# rest of the script calls are the matcher's batched form calls.
forms = evals - players - sessions
print(f"round trips: 1 script call per join ({players}); per session formed: {forms / sessions:.2f} form calls "
      f"(batched) + 1 end call ({sessions} sessions); commands executed inside Redis in all: {after - before}")
PY
