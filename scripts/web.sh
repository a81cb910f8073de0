#!/usr/bin/env bash
# Browsers on the local stack, with TLS from a throwaway CA made for the run:
#   scripts/web.sh demo    `make demo-web`: the stack, the web page served over https, its URL;
#                          runs until ctrl-c
#   scripts/web.sh check   `make web-check`: the JavaScript client's tests (Node) against the
#                          stack, then headless Chromium (Playwright) playing a whole match as
#                          WEB_PLAYERS (3) players in as many tabs; with BENCH_PLAYERS, then
#                          that many players' time to play in the page
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stack.sh
. scripts/stack.sh

mode=${1:-}
# check's second argument: how many players' time to play to measure (make passes WEB_BENCH_PLAYERS).
bench_players=${2:-}
case $mode in demo | check) ;; *) echo "usage: scripts/web.sh demo | scripts/web.sh check [BENCH_PLAYERS]" >&2; exit 2 ;; esac
# Settings checked before anything is installed, built or started.
size=${SESSION_SIZE:-${WEB_PLAYERS:-3}}
[[ $size =~ ^[1-9][0-9]*$ ]] || mp_die "SESSION_SIZE (or WEB_PLAYERS) must be a whole number above 0, got '$size'."
if [ -n "$bench_players" ]; then
  if ! [[ $bench_players =~ ^[1-9][0-9]*$ ]] || [ $((bench_players % size)) != 0 ]; then
    mp_die "WEB_BENCH_PLAYERS must be a whole number of sessions of $size players, got '$bench_players'."
  fi
fi

if [ "$mode" = check ]; then
  mp_need_browser_tools "make web-check" "the web example" chromium
else
  mp_need_browser_tools "make demo-web" "the web example"
fi
mp_need_redis
mp_need_postgres

echo "== building, and the JavaScript client =="
mp_build
bin=$MP_BIN
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
[ "$mode" = demo ] || (cd examples/web && npm ci --no-audit --no-fund --loglevel=error)

out=.run/web-$mode
rm -rf "$out"; mkdir -p "$out"
read -r web_port < <(mp_free_ports 1)
page="https://127.0.0.1:$web_port"
export MP_ALLOWED_ORIGINS=$page MP_TLS=1 SESSION_SIZE=${SESSION_SIZE:-${WEB_PLAYERS:-3}}
echo "== starting Redis, PostgreSQL, backend and proxy (TLS, session size $SESSION_SIZE) =="
mp_start_stack "$out/stack"
trap 'mp_stop_web; mp_stop_stack' EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

web_pid=''
mp_stop_web() { [ -z "$web_pid" ] || { kill -TERM "$web_pid" 2>/dev/null || true; wait "$web_pid" 2>/dev/null || true; }; }
WEB_BIND="127.0.0.1:$web_port" WEB_TLS_CERT="$MP_STACK_DIR/tls/tls.pem" WEB_TLS_KEY="$MP_STACK_DIR/tls/tls.key" \
  MP_API_URL="$MP_PROXY_TLS_URL/api" LOADGEN="$bin/loadgen" PLAYER_TOKEN_SECRET="$MP_PLAYER_TOKEN_SECRET" \
  node examples/web/serve.mjs >"$out/web.log" 2>&1 &
web_pid=$!
for _ in $(seq 1 100); do
  grep -q '^LISTENING' "$out/web.log" && break
  kill -0 "$web_pid" 2>/dev/null || mp_die "the web page's server exited during start-up: $(tail -n 1 "$out/web.log")"
  sleep 0.1
done
grep -q '^LISTENING' "$out/web.log" || mp_die "the web page's server did not start in 10 s; see $out/web.log"

if [ "$mode" = demo ]; then
  echo
  echo "the web page:  $page/   (open it in two or more tabs or browsers, one player each)"
  echo "the API:       $MP_PROXY_TLS_URL/api   game connections: wss://127.0.0.1:${MP_PROXY_TLS_URL##*:}/play"
  echo "TLS: a throwaway CA made for this run signs the certificate: $MP_TLS_CA"
  echo "     trust it in the browser for this run, or accept the browser's warning once for"
  echo "     $page and once for $MP_PROXY_TLS_URL/health"
  echo "sessions of $SESSION_SIZE players (SESSION_SIZE); logs under $MP_STACK_DIR; ctrl-c stops everything"
  while kill -0 "$web_pid" 2>/dev/null && kill -0 "$MP_BACKEND_PID" 2>/dev/null && kill -0 "$MP_PROXY_PID" 2>/dev/null; do
    sleep 1
  done
  mp_die "a component exited; see the logs under $MP_STACK_DIR"
fi

echo "== the JavaScript client's tests (Node) against the stack =="
(cd clients/js && MP_API_URL="$MP_PROXY_TLS_URL/api" LOADGEN="$(pwd)/../../$bin/loadgen" \
  PLAYER_TOKEN_SECRET="$MP_PLAYER_TOKEN_SECRET" MP_SESSION_SIZE="$SESSION_SIZE" NODE_EXTRA_CA_CERTS="$MP_TLS_CA" npm test --silent)

echo "== the web page in headless Chromium: $SESSION_SIZE players in $SESSION_SIZE tabs =="
PAGE_URL="$page/" TLS_SPKI="$MP_TLS_SPKI" PLAYERS="$SESSION_SIZE" SCREENSHOT="$out/web.png" \
  node examples/web/browser-test.mjs
if [ -n "$bench_players" ]; then
  echo "== time to play in the page: $bench_players players =="
  PAGE_URL="$page/" TLS_SPKI="$MP_TLS_SPKI" PLAYERS="$bench_players" BENCH=1 \
    node examples/web/browser-test.mjs
fi
echo "web check passed: screenshot at $out/web.png"
