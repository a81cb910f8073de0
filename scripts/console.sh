#!/usr/bin/env bash
# `make console-check`: the operator console in headless Chromium (Playwright), over https
# through the proxy (PROXY_CONSOLE, TLS from a throwaway CA made for the run), while a swarm
# plays: sign-in, live queues and sessions, a player found, a session ended from the keyboard
# and audited, phone and desktop widths, sign-out; screenshots under .run/console-check.
# With CONSOLE_BENCH_TABS=N it then measures what N open consoles cost the backend: its CPU
# time over BENCH_SECONDS (30) with none open, then with N, side by side in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stack.sh
. scripts/stack.sh

tabs=${CONSOLE_BENCH_TABS:-0}
seconds=${BENCH_SECONDS:-30}
[[ $tabs =~ ^[0-9]+$ ]] || mp_die "CONSOLE_BENCH_TABS must be a whole number, got '$tabs'."
[[ $seconds =~ ^[1-9][0-9]*$ ]] || mp_die "BENCH_SECONDS must be a whole number above 0, got '$seconds'."

mp_need_browser_tools "make console-check" "the console's browser test" chromium
mp_need_redis
mp_need_postgres

echo "== building, and the browser test's Playwright =="
mp_build
bin=$MP_BIN
(cd backend/console/test && npm ci --no-audit --no-fund --loglevel=error)

out=.run/console-check
rm -rf "$out"; mkdir -p "$out"
out=$(cd "$out" && pwd)
# The swarm's queue, and a profile with versions for the console to set weights of and drain.
cat >"$out/queues.yaml" <<'YAML'
servers:
  canary:
    command: ["/bin/sleep", "60"]
    ports: [{name: game, protocol: tcp}]
    versions:
      - {name: stable, weight: 1}
      - {name: next, weight: 0}
queues:
  - {name: default, session_size: 4}
  - {name: canary, session_size: 2, server: canary}
YAML
export MP_TLS=1 MP_PROXY_CONSOLE=1 SESSION_SIZE=4 MATCHMAKING_CONFIG=$out/queues.yaml
echo "== starting Redis, PostgreSQL, backend and proxy (TLS, the console under /api/console/) =="
mp_start_stack "$out/stack"
swarm_pid=''
mp_stop_swarm() { [ -z "$swarm_pid" ] || { kill -TERM "$swarm_pid" 2>/dev/null || true; wait "$swarm_pid" 2>/dev/null || true; }; }
trap 'mp_stop_swarm; mp_stop_stack' EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

console_url="$MP_PROXY_TLS_URL/api/console/"
echo "== a swarm of 40 players (sessions of 4, 40 s matches) =="
PLAYER_TOKEN_SECRET=$MP_PLAYER_TOKEN_SECRET "$bin/loadgen" swarm --target-url "$MP_PROXY_URL" --clients 40 \
  --session-size 4 --match-duration 40 --spawn-rate 4 --progress none --connect-override "${MP_PROXY_URL#http://}" \
  >"$out/swarm.log" 2>&1 &
swarm_pid=$!

echo "== the console in headless Chromium: $console_url =="
CONSOLE_URL="$console_url" ADMIN_TOKEN="$MP_ADMIN_TOKEN" TLS_SPKI="$MP_TLS_SPKI" SHOTS="$out" \
  node backend/console/test/browser-test.mjs

# The swarm's players (their game connections on the proxy's plain port) play on; the one
# session the console ended is the only one cut short.
wait "$swarm_pid" || true
swarm_pid=''
played=$(sed -n 's/^played: \([0-9]*\) of 40.*/\1/p' "$out/swarm.log")
grep -E '^played' "$out/swarm.log" || true
if [ -z "$played" ] || [ "$played" -lt 36 ]; then
  tail -n 25 "$out/swarm.log" >&2
  mp_die "console-check FAILED: the swarm played ${played:-no} players of 40; all but the ended session's 4 should have"
fi

for log in "$MP_STACK_DIR/backend.log" "$MP_STACK_DIR/proxy.log"; do
  if grep -qF "$MP_ADMIN_TOKEN" "$log"; then
    mp_die "console-check FAILED: the operator token is in $log"
  fi
done

if [ "$tabs" -gt 0 ]; then
  cpu() { awk '{print $14 + $15}' "/proc/$MP_BACKEND_PID/stat"; }
  ticks=$(getconf CLK_TCK)
  echo "== what $tabs open consoles cost the backend: $seconds s without, then $seconds s with =="
  before=$(cpu); sleep "$seconds"; idle=$(( $(cpu) - before ))
  CONSOLE_URL="$console_url" ADMIN_TOKEN="$MP_ADMIN_TOKEN" TLS_SPKI="$MP_TLS_SPKI" SHOTS="$out" \
    BENCH_TABS="$tabs" BENCH_SECONDS="$seconds" node backend/console/test/browser-test.mjs >"$out/bench.log" 2>&1 &
  bench_pid=$!
  for _ in $(seq 1 600); do grep -q '^BENCH_OPEN' "$out/bench.log" && break; sleep 0.1; done
  grep -q '^BENCH_OPEN' "$out/bench.log" || mp_die "the consoles did not open; see $out/bench.log"
  before=$(cpu)
  for _ in $(seq 1 $((seconds * 10 + 600))); do grep -q '^BENCH_DONE' "$out/bench.log" && break; sleep 0.1; done
  open=$(( $(cpu) - before ))
  wait "$bench_pid" || mp_die "the consoles' run failed; see $out/bench.log"
  python3 - "$idle" "$open" "$ticks" "$seconds" "$tabs" <<'PY'
import sys
idle, opened, ticks, seconds, tabs = (float(a) for a in sys.argv[1:])
per = lambda t: t / ticks / seconds * 1000
extra = per(opened) - per(idle)
print(f"backend CPU: {per(idle):.1f} ms/s with no console open, {per(opened):.1f} ms/s with {tabs:.0f} open "
      f"(x{per(opened) / max(per(idle), 0.001):.2f}): {extra / tabs:.2f} ms of CPU per second per open console")
PY
fi
echo "console check passed: screenshots at $out/console-desktop.png and $out/console-phone.png"
