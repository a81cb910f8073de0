#!/usr/bin/env bash
# `make scripts-check` (CI runs it): the promises the entry-point scripts make, tried as a
# new user would.
#  1. As root, ephemeral PostgreSQL starts from a run directory its user cannot enter (any
#     clone under /root).
#  2. A start-up that fails half way (the proxy never becomes healthy, the backend refuses its
#     settings) leaves nothing running and prints the component's one-line reason.
#  3. ctrl-c during `make demo` stops in order within 3 s (the swarm, the proxy, the backend
#     ending its sessions and stopping their servers while Redis still answers, then Redis
#     and PostgreSQL), says "interrupted", exits 130, and leaves nothing running.
#     .run/demo then holds that run's files only.
#  4. scripts/measure-game-server.py finds the binary through CARGO_TARGET_DIR from anywhere.
#  5. A benchmark or demo given a setting it cannot take stops with one sentence before it
#     installs, builds or starts anything.
#  6. Services started in the run directory another run has just stopped in (`make
#     down-local` then `make up-local`) keep their files: the first run's watchdog, which
#     wakes up to a second later, leaves them alone.
#  7. A failed `make up-local` leaves no pid behind, and `make down-local` never signals a
#     process that is not its own stack's holder.
#  8. The hands-on examples of the README and docs/ that start the local stack run as written,
#     line by line, and answer what their comments say (scripts/check-readme.py; the `nc` session is played
#     by that script, typing what the README says to type). Its stack's logs hold no warning
#     about its own defaults and each start-up fact once.
# Needs the shared build (mp_build; CI builds it for the tests first).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stack.sh
. scripts/stack.sh
bin=$MP_BIN
[ -x "$bin/backend" ] || mp_die "scripts-check needs the binaries: run 'make build' first."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
fail() { echo "scripts-check FAILED: $*" >&2; exit 1; }
left() { pgrep -f "$1" >/dev/null 2>&1; }

# 1. A private run directory.
if [ "$(id -u)" = 0 ]; then
  private=$scratch/private
  mkdir -m 700 "$private"
  ( mp_start_services "$private/run"
    "$MP_PG_BIN/psql" "$MP_DATABASE_URL" -tAc 'SELECT 1' | grep -qx 1 ) || fail "services in a root-only directory"
  left "$private" && fail "services in a root-only directory were left running"
  echo "scripts-check: PostgreSQL starts from a run directory only root can enter"
fi

# 2. The proxy never becomes healthy: the backend and the services it started must go.
fake=$scratch/bin
mkdir -p "$fake"
ln -s "$(cd "$bin" && pwd)/backend" "$fake/backend"
ln -s "$(cd "$bin" && pwd)/game-server" "$fake/game-server"
printf '#!/bin/sh\necho "proxy: broken on purpose" >&2\nexit 1\n' >"$fake/proxy"
chmod +x "$fake/proxy"
if ( MP_BIN_DIR=$fake mp_start_stack "$scratch/stack" ) >"$scratch/half.log" 2>&1; then
  fail "a stack whose proxy fails started"
fi
grep -q "proxy exited during start-up: proxy: broken on purpose" "$scratch/half.log" \
  || fail "no word of the failed proxy and its reason: $(cat "$scratch/half.log")"
sleep 0.5
left "$scratch" && fail "a failed start-up left processes running: $(pgrep -af "$scratch")"
# A configuration mistake: the backend's own one-line reason is printed.
if ( MATCHMAKING_CONFIG=$scratch/no-such-queues.yaml mp_start_stack "$scratch/stack-config" ) >"$scratch/config.log" 2>&1; then
  fail "a stack with a missing MATCHMAKING_CONFIG started"
fi
grep -q "backend exited during start-up: .*MATCHMAKING_CONFIG" "$scratch/config.log" \
  || fail "a configuration mistake without its reason: $(cat "$scratch/config.log")"
sleep 0.5
left "$scratch" && fail "a failed start-up left processes running: $(pgrep -af "$scratch")"
echo "scripts-check: a failed start-up stops what it started and says why"

# 3. ctrl-c during the demo, started as a terminal starts a command: in a process group of its
# own, with SIGINT at its default (a shell that was itself started in the background, as a CI
# runner may start this, hands its children SIGINT ignored, which no script can trap again).
set -m
CLIENTS=24 MATCH_DURATION=60 python3 -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])' \
  scripts/demo.sh >"$scratch/demo.log" 2>&1 &
demo=$!
set +m
for _ in $(seq 1 600); do
  grep -q "^== swarm" "$scratch/demo.log" && break
  kill -0 "$demo" 2>/dev/null || fail "the demo ended before its swarm: $(tail -5 "$scratch/demo.log")"
  sleep 0.1
done
sleep 2
# This run's own processes (other runs may share the machine): its backend's game servers, and
# its Redis.
backend=$(pgrep -P "$demo" -f "$bin/backend" || true)
servers=$(pgrep -d ' ' -P "${backend:-0}" -f "game-server" || true)
redis=$(pgrep -P "$demo" -f "redis-server" || true)
{ [ -n "$servers" ] && [ -n "$redis" ]; } || fail "ctrl-c: no game server (${servers:-none}) or Redis (${redis:-none}) of the demo's found running"
interrupted=$(date +%s%N)
kill -INT -- "-$demo"
rc=0
wait "$demo" || rc=$?
took_ms=$((($(date +%s%N) - interrupted) / 1000000))
[ "$rc" = 130 ] || fail "ctrl-c: exit $rc, not 130: $(tail -5 "$scratch/demo.log")"
# Nothing may outlive the demo's return: not a game server, not Redis.
for pid in $servers $redis; do
  kill -0 "$pid" 2>/dev/null && fail "ctrl-c: outlived the demo: $(ps -o pid=,args= -p "$pid")"
done
[ "$took_ms" -le 3000 ] || fail "ctrl-c: the demo took ${took_ms} ms to stop, more than 3 s"
# In order: the backend ended its sessions and stopped their servers with Redis still there.
for said in "terminating the remaining servers" "reason=terminated recorded=Ended" "backend stopped"; do
  grep -q "$said" .run/demo/backend.log \
    || fail "ctrl-c: the backend did not end its sessions in order (no '$said'): $(tail -5 .run/demo/backend.log)"
done
grep -q "^interrupted" "$scratch/demo.log" || fail "ctrl-c: no 'interrupted'"
# .run/demo holds this run's files only (it wrote no summary or chart before ctrl-c).
{ [ ! -e .run/demo/summary.json ] && [ ! -e .run/demo/latency.svg ]; } \
  || fail "ctrl-c: .run/demo holds an earlier run's summary beside this run's logs"
if grep -Eq "Traceback|curl:|FAILED|wrong_length" "$scratch/demo.log"; then
  fail "ctrl-c: noise after the interrupt: $(grep -E "Traceback|curl:|FAILED|wrong_length" "$scratch/demo.log" | head -3)"
fi
sleep 0.5
left "demo-stack-$demo" && fail "ctrl-c: left running: $(pgrep -af "demo-stack-$demo")"
left "$bin/(backend|proxy|loadgen)" && fail "ctrl-c: binaries left running: $(pgrep -af "$bin/(backend|proxy|loadgen)")"
echo "scripts-check: ctrl-c during make demo stops everything in order in ${took_ms} ms and says 'interrupted'"

# 4. The game-server measurement from another directory, through CARGO_TARGET_DIR (on the
# shared build, which is what this check has).
target=$(cd "$bin/.." && pwd)
script=$(pwd)/scripts/measure-game-server.py
# The whole output first: `grep -q` in a pipe would close it at the first match, and the
# script's next line would then fail on the broken pipe.
measured=$(cd "$scratch" && BUILD_PROFILE=dev CARGO_TARGET_DIR=$target python3 "$script" "" 3) \
  || fail "measure-game-server.py does not find the binary through CARGO_TARGET_DIR"
grep -q "exec to LISTENING" <<<"$measured" \
  || fail "measure-game-server.py does not find the binary through CARGO_TARGET_DIR"
echo "scripts-check: measure-game-server.py follows CARGO_TARGET_DIR"

# 5. Benchmark settings refused up front.
refused() {
  local want=$1 out rc=0
  shift
  out=$(env "$@" 2>&1) || rc=$?
  [ "$rc" != 0 ] || fail "$* was accepted"
  [ "$out" = "$want" ] || fail "$*: expected only '$want', got: $out"
}
refused "CPU_SPLIT must be 0 or 1, got '2'." CPU_SPLIT=2 scripts/bench-proxy.sh
refused "WARM_POOL_MIN must be above 0 for the warm runs, got '0'." WARM_POOL_MIN=0 scripts/bench-time-to-play.sh
refused "WARM_POOL_MIN must be above 0 for the warm runs, got 'many'." WARM_POOL_MIN=many scripts/bench-time-to-play.sh
refused "MAX_EXAMPLES must be a whole number above 0, got '0'." MAX_EXAMPLES=0 scripts/api-check.sh
refused "SEED must be a whole number, got '-1'." SEED=-1 scripts/api-check.sh
refused "CLIENTS must be a whole number above 0, got 'abc'." CLIENTS=abc scripts/demo.sh
refused "MATCH_DURATION must be a number of seconds or players per second (0 or more), got '5s'." MATCH_DURATION=5s scripts/demo.sh
refused "WEB_BENCH_PLAYERS must be a whole number of sessions of 3 players, got '4'." scripts/web.sh check 4
refused "make demo-kubernetes needs NETWORK_POLICY to be enforce or off, not 'yes'." NETWORK_POLICY=yes scripts/demo-kubernetes.sh
refused "BUILD_PROFILE must be dev (the shared build) or release, got 'fast'." BUILD_PROFILE=fast scripts/demo.sh
refused "BUILD_PROFILE must be dev (the shared build) or release, got 'fast'." BUILD_PROFILE=fast scripts/local.sh up
echo "scripts-check: benchmarks, demos and api-check refuse a bad setting with one sentence before starting anything"

# 6. One run right after another in the same directory.
again=$scratch/again
bash -c '. scripts/services.sh; mp_start_services "$1"' _ "$again" >"$scratch/again-1.log" 2>&1 ||
  fail "services for the first run: $(tail -3 "$scratch/again-1.log")"
rc=0
bash -c '. scripts/services.sh; mp_start_services "$1"; sleep 1.5
  [ -d "$MP_SERVICES_DIR/redis" ] || exit 3
  redis-cli -u "$MP_REDIS_URL" ping | grep -qx PONG || exit 4
  "$MP_PG_BIN/psql" "$MP_DATABASE_URL" -tAc "SELECT 1" | grep -qx 1 || exit 5' _ "$again" >"$scratch/again-2.log" 2>&1 || rc=$?
[ "$rc" = 0 ] || fail "a run started where another had just stopped lost its run directory or services (exit $rc)"
sleep 0.5
left "$again" && fail "the second run left processes running: $(pgrep -af "$again")"
[ ! -e "$again" ] || fail "the second run left its run directory behind"
echo "scripts-check: a run started where another has just stopped keeps its services"

# 7. make up-local that fails keeps no pid, and make down-local signals only its own holder.
if [ -e .run/local/holder.pid ]; then
  echo "scripts-check: skipping the up-local checks: a local stack may be running (.run/local/holder.pid)"
else
  if MATCHMAKING_CONFIG=$scratch/no-such-queues.yaml scripts/local.sh up >"$scratch/up.log" 2>&1; then
    scripts/local.sh down >/dev/null 2>&1 || true
    fail "make up-local with a missing MATCHMAKING_CONFIG started"
  fi
  [ ! -e .run/local/holder.pid ] || fail "a failed make up-local left .run/local/holder.pid behind"
  # A pid left behind now names some other process: down-local must leave it alone.
  sleep 60 &
  stranger=$!
  echo "$stranger" >.run/local/holder.pid
  scripts/local.sh down >"$scratch/down.log" 2>&1 || fail "make down-local: $(cat "$scratch/down.log")"
  kill -0 "$stranger" 2>/dev/null || fail "make down-local signalled a process that was not its stack's"
  kill "$stranger" 2>/dev/null || true
  grep -qx "no local stack is running" "$scratch/down.log" || fail "make down-local: $(cat "$scratch/down.log")"
  [ ! -e .run/local/holder.pid ] || fail "make down-local kept a pid that is not its stack's"
  echo "scripts-check: a failed make up-local keeps no pid, and make down-local signals only its own stack"
fi

# 8. The hands-on examples of the README and docs/, as written.
if [ -e .run/local/holder.pid ]; then
  echo "scripts-check: skipping the hands-on examples: a local stack may be running (.run/local/holder.pid)"
else
  scripts/check-readme.py >"$scratch/readme.log" 2>&1 || fail "the hands-on examples: $(tail -n 20 "$scratch/readme.log")"
  grep 'ran as written' "$scratch/readme.log" | sed 's/^check-readme/scripts-check/'
  # The last example's stack, with its defaults on this machine: nothing to warn about, each
  # start-up fact said once.
  logs=.run/local/stack
  warned=$(grep -hE ' (WARN|ERROR) ' "$logs/backend.log" "$logs/proxy.log" | cut -c1-300 || true)
  [ -z "$warned" ] || fail "the local stack's defaults logged warnings on this machine: $warned"
  [ "$(grep -c 'migrations applied' "$logs/backend.log")" = 1 ] || fail "the backend said 'migrations applied' other than once"
  ! grep -q 'sqlx::postgres::notice' "$logs/backend.log" || fail "PostgreSQL's notices reach the backend's log"
  echo "scripts-check: the local stack's defaults fit this machine (no warning logged; migrations said once, no PostgreSQL notice)"
fi
